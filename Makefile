# Two commands do all the set-up on a fresh machine:
#   make demo   install into .venv, then post-train the tiny model on the built-in sample and show the result (CPU, < 5 minutes)
#   make test   install into .venv, then run the test suite (slow end-to-end variants: make test-all)
VENV ?= .venv
PY := $(VENV)/bin/python
# torch is pinned to the wheels this project is tested with (setup.py's floor, 2.11, is the oldest tested; see
# compat.TORCH_TESTED). People who manage their own environment run `pip install -e ".[dev]"` instead.
TORCH := torch==2.14.1 torchvision==0.29.1

.PHONY: install demo demo-distill test test-all

# Without an NVIDIA GPU, x86_64 machines take torch's CPU build (about 200 MB where the CUDA build fills 6.5 GB) from
# PyTorch's CPU index, and the pinned CUDA build where that index cannot be reached (as on the machines our CI runs
# on, which reach PyPI alone): both run the tests.
CPU_INDEX := https://download.pytorch.org/whl/cpu
CPU_TORCH := torch==2.14.1+cpu torchvision==0.29.1+cpu

$(VENV)/.installed: setup.py
	python3 -m venv $(VENV)
	if [ "$$(uname -m)" = x86_64 ] && ! command -v nvidia-smi >/dev/null 2>&1 \
		&& $(PY) -m pip install -q --retries 0 --timeout 10 --index-url $(CPU_INDEX) $(CPU_TORCH) 2>/dev/null; then \
		echo "installed torch's CPU build"; \
	else \
		$(PY) -m pip install -q $(TORCH); \
	fi
	# natten builds against the torch installed above (its own build environment would fetch another torch)
	$(PY) -m pip install -q --no-build-isolation "natten>=0.21"
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

install: $(VENV)/.installed

# Post-train the shipped tiny model on the built-in sample clips, then continue a held-out clip's first frame
# before and after: outputs/demo/{generated.mp4,comparison.png,demo_metrics.json}.
DEMO_RUN := outputs/demo/run
demo: install
	$(VENV)/bin/accelerate launch --num_processes 1 --num_machines 1 --mixed_precision no --dynamo_backend no \
		train_video2world.py --model tiny --output_dir $(DEMO_RUN) --cache_latents --cache_windows_per_clip 4
	$(PY) -m cosmos_v2w_diffusers.demo --run_dir $(DEMO_RUN) --output_dir outputs/demo

# After `make demo`: distil its post-trained model into a 4-step student without guidance (DMD2, 500 steps, about
# 3 minutes on 2 cores), then redo the demo's pictures with a third row: outputs/demo/comparison.png (rows: real,
# before, after, distilled) and the student's metrics in demo_metrics.json.
DISTILL_RUN := outputs/demo/distill
demo-distill: install
	test -f $(DEMO_RUN)/transformer_ema/config.json || $(MAKE) demo
	$(VENV)/bin/accelerate launch --num_processes 1 --num_machines 1 --mixed_precision no --dynamo_backend no \
		train_video2world.py --model tiny --dit_path $(DEMO_RUN)/checkpoints/model/iter_000002000.pt --load_ema \
		--distill_steps 4 --guidance 1 --max_iter 500 --output_dir $(DISTILL_RUN) --cache_latents --cache_windows_per_clip 4
	$(PY) -m cosmos_v2w_diffusers.demo --run_dir $(DEMO_RUN) --student_dir $(DISTILL_RUN) --output_dir outputs/demo

# One of each kind of case (about 8 minutes on 2 cores: 485 s on 2026-12-07); test-all adds the slower end-to-end variants (CI runs both).
test: install
	$(PY) -m pytest -q -m "not slow" tests

test-all: install
	$(PY) -m pytest -q tests
