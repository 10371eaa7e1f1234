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
# PyTorch's CPU index (TORCH_INDEX_URL, for a mirror of it), and the pinned CUDA build where that index cannot be
# reached (as on the machines our CI runs on, which reach PyPI alone), saying so: both run the tests. A torch (and torchvision) already
# installed in the python3 that runs make (2.11 or newer) is kept: the venv sees it (--system-site-packages).
TORCH_INDEX_URL ?= https://download.pytorch.org/whl/cpu
CPU_TORCH := torch==2.14.1+cpu torchvision==0.29.1+cpu
HAS_TORCH := python3 -c "import sys, torch, torchvision; sys.exit(tuple(map(int, torch.__version__.split('.')[:2])) < (2, 11))" 2>/dev/null

$(VENV)/.installed: setup.py
	@if $(HAS_TORCH); then \
		echo "[1/4] keeping the installed torch $$(python3 -c 'import torch; print(torch.__version__)')"; \
		python3 -m venv --system-site-packages $(VENV); \
	else \
		python3 -m venv $(VENV); \
		if [ "$$(uname -m)" = x86_64 ] && ! command -v nvidia-smi >/dev/null 2>&1 \
			&& echo "[1/4] torch's CPU build (about 200 MB) from $(TORCH_INDEX_URL)" \
			&& $(PY) -m pip install -q --retries 0 --timeout 10 --index-url $(TORCH_INDEX_URL) $(CPU_TORCH) 2>/dev/null; then \
			:; \
		else \
			echo "[1/4] torch's CUDA build from PyPI (about 6.5 GB, some minutes): $(TORCH_INDEX_URL) could not be reached or"; \
			echo "      this machine has a GPU. For the CPU build, set TORCH_INDEX_URL to a reachable copy of PyTorch's CPU index,"; \
			echo "      or install torch>=2.11 into python3 first (it is kept)."; \
			$(PY) -m pip install -q $(TORCH); \
		fi; \
	fi
	@# natten builds against the torch installed above (its own build environment would fetch another torch)
	@echo "[2/4] natten (neighbourhood attention)" && $(PY) -m pip install -q --no-build-isolation "natten>=0.21"
	@echo "[3/4] this package and its dependencies (diffusers, transformers, accelerate, peft, datasets, ...)"
	@$(PY) -m pip install -q -e ".[dev]"
	@echo "[4/4] installed into $(VENV)"
	@touch $@

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

# One of each kind of case (under 6 minutes on 2 cores: 344 s, 351 s with the interpreter's start, on 2026-12-07); test-all adds the slower end-to-end variants (CI runs both).
test: install
	$(PY) -m pytest -q -m "not slow" tests

test-all: install
	$(PY) -m pytest -q tests
