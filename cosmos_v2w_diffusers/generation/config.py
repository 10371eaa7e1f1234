"""The generation flags (`infer_video2world.py`, NVIDIA's `examples/video2world.py` names): `GenerationConfig`, one
frozen dataclass whose fields are the flags, each with its help and choices, and `check()`, the rules between them.

`cli/infer_flags.py` builds the command line from these fields; the library (`runner.py`, `jobs.py`) reads a
`GenerationConfig`. No torch here: `--help` and the flag checks answer at once.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..choices import ATTENTION_BACKENDS, DEFAULT_PROMPT_REFINER, NUM_FRAMES_BY_FPS, RESOLUTIONS
from ..utils.flags import Flags, flag

# The flags that trade exactness for speed, listed apart by `--help` (each measured in BENCHMARKS.md).
FAST_GENERATION_FLAGS = ("cache", "cache_min_psnr", "sparse_attention", "use_cuda_graphs", "fp8")


@dataclass(frozen=True)
class GenerationConfig(Flags):
    """What to generate and how, as the flags give it; `check()` refuses flags that contradict each other."""

    model_size: str = flag("2B", "the model's architecture", choices=["2B", "14B", "tiny"])
    pretrained_model_name_or_path: str | None = flag(None, "Hub id or diffusers folder (default: the preset's)")
    dit_path: str | None = flag(
        None, "post-trained transformer: native iter_N.pt, NVIDIA's .pt, or our diffusers export folder"
    )
    load_ema: bool = flag(False, "with a native --dit_path: use its net_ema.* weights")
    lora_path: str | None = flag(None, "LoRA adapter from our training (<output_dir>/lora)")
    prompt: str | None = flag(None, "what the video shows (or each entry of --batch_input_json)")
    negative_prompt: str | None = flag(
        None, "the unconditional text of classifier-free guidance (default: NVIDIA's negative prompt)"
    )
    input_path: str | None = flag(None, "conditioning image or video")
    num_conditional_frames: int = flag(1, "a video's last N frames condition", choices=[1, 5])
    guidance: float | None = flag(
        None,
        "classifier-free guidance scale; 1 or less: no guidance (default: 7, NVIDIA's; 1 for a distilled student, "
        "whose guidance is built in)",
    )
    seed: int = flag(0, "the initial noise, drawn as NVIDIA draws it")
    resolution: str = flag("720", "the video's height class", choices=sorted(RESOLUTIONS))
    aspect_ratio: str = flag("16:9", "with --resolution", choices=["16:9", "9:16", "1:1", "4:3", "3:4"])
    fps: int = flag(16, "frame rate: 93 frames at 16, 61 at 10", choices=sorted(NUM_FRAMES_BY_FPS))
    height: int | None = flag(None, "override the resolution table (multiple of 16)")
    width: int | None = flag(None, "override the resolution table (multiple of 16)")
    num_frames: int | None = flag(None, "override the frame count (4k+1)")
    num_inference_steps: int | None = flag(
        None,
        "sampling steps (default: 35, NVIDIA's; for a distilled student --dit_path, the steps it was distilled for, "
        "sampled with its few-step sampler)",
    )
    scheduler: str = flag("cosmos", "NVIDIA's sampler or diffusers' Euler", choices=["cosmos", "euler"])
    num_chunks: int = flag(
        1,
        "a long video: this many chunks, each continuing the last --num_conditional_frames frames of the one before "
        "(NVIDIA's video2world_lvg.py, the frames handed over in memory at full precision), from seeds --seed, "
        "--seed + 1, ...; F + (N-1)(F-c) frames (1 to 100)",
    )
    seam_correction: bool = flag(
        False,
        "with --num_chunks: shift each later chunk's first frames by the VAE's offset on its conditioning frame, "
        "fading over 8 frames, so the seams do not jump (not in NVIDIA's loop: off by default)",
    )
    save_path: str = flag("output/generated_video.mp4", "the .mp4 to write")
    batch_input_json: str | None = flag(
        None,
        'JSON list of {"prompt", "input_path", "save_path"} (NVIDIA: input_video, output_video), each with an '
        'optional "num_chunks"',
    )
    disable_guardrail: bool = flag(False, "run without cosmos_guardrail")
    prompt_refiner: str | None = flag(
        None,
        f"rewrite each prompt with a vision-language model that sees the conditioning image or video (NVIDIA's "
        f"prompt refiner; alone: {DEFAULT_PROMPT_REFINER}, a Hub id or folder of a Qwen2.5-VL model); off by "
        f"default, as in NVIDIA's post-training configs",
    )
    offload_prompt_refiner: bool = flag(
        False, "keep the prompt refiner on the CPU, on the GPU only while it writes (about 16 GB in bf16)"
    )
    disable_prompt_refiner: bool = flag(
        False, "accepted for NVIDIA's command lines: the refiner is off unless --prompt_refiner is given"
    )
    downcast_text_encoder: bool = flag(
        False,
        "accepted for NVIDIA's command lines: the T5 encoder already runs in the pipeline's precision (bf16 on a "
        "GPU), which is what NVIDIA's flag asks for",
    )
    benchmark: bool = flag(
        False,
        "NVIDIA's benchmark mode: each generation runs once untimed (warm-up), then 3 timed times; each time and "
        "their mean are logged, and the last video is written",
    )
    offload_text_encoder: bool = flag(False, "keep the T5 encoder on the CPU (about 11 GB of GPU memory in bf16)")
    offload_guardrail: bool = flag(False, "keep the guardrail models on the CPU")
    offload_model: bool = flag(False, "diffusers' model CPU offload of every component")
    group_offload: bool = flag(
        False,
        "diffusers' group offloading of the transformer: its weights in CPU memory, each block's copied to the GPU "
        "while the one before it computes (14B at 432x768 on a 30 GB card)",
    )
    num_gpus: int = flag(
        1,
        "shard each generation's latent tokens over this many processes started together (torchrun "
        "--nproc_per_node N; NVIDIA's flag); rank 0 writes the video",
    )
    guidance_parallel: bool = flag(
        False,
        "with an even --num_gpus N: each half of the processes evaluates one side of classifier-free guidance "
        "(conditional, unconditional), sharding the tokens over its N/2 processes (none inside the transformer "
        "with N = 2)",
    )
    compile: bool | None = flag(
        None,
        "torch.compile each transformer block (default: on with CUDA; about 30 s once, pays off over a 35-step video)",
    )
    attention_backend: str = flag(
        "auto",
        "attention kernel: cudnn, flash4 (FlashAttention-4), native (torch's choice), or auto (the fastest installed)",
        choices=list(ATTENTION_BACKENDS),
    )
    cache: float | str | None = flag(
        None,
        "training-free step caching (diffusers' First Block Cache): where the first block's residual changed by "
        "less than THRESHOLD (relative) since the last step, the other blocks are skipped and their last residual "
        "reused; the log says how many block evaluations were skipped. On trained weights (the tiny models, 35 "
        "steps with guidance 7, worst frame against dense): 0.1 skips 43-45%% of the forwards at 32-44 dB, 0.2 "
        "57-59%% at 25-32 dB (BENCHMARKS.md). auto: the first input is generated dense and again at falling "
        "thresholds until one keeps --cache_min_psnr; the choice is logged and stored beside the weights "
        "(step_cache.json), so later runs with the same settings reuse it",
    )
    cache_min_psnr: float = flag(
        30.0, "with --cache auto: the lowest PSNR (dB) against dense any frame of the first input may have"
    )
    sparse_attention: str = flag(
        "none",
        "natten: NVIDIA's neighbourhood attention in its sparse layers (pip install natten); made for NVIDIA's "
        "NATTEN checkpoints (on a dense-trained tiny model: 12 dB from dense; with natten's Flex backend 15%% slower "
        "than dense cuDNN on an H100: its Hopper kernels are what give NVIDIA's 2.4x)",
        choices=["none", "natten"],
    )
    use_cuda_graphs: bool = flag(
        False,
        "record the transformer's forward once per shape as a CUDA graph and replay it (NVIDIA's flag): the CPU "
        "stops launching each kernel; it pays where kernels are short (small models and sizes; BENCHMARKS.md). Not "
        "with --cache, offloading or several GPUs",
    )
    fp8: bool = flag(
        False,
        "the transformer blocks' linear layers in fp8 (e4m3 weights, per-token activation scales; fp8 matmuls on "
        "Hopper and newer GPUs; the tiny model: 39.7 dB from dense, worst frame; the 2B on an H100: 9%% faster)",
    )

    def check(self) -> None:
        super().check()
        if isinstance(self.cache, float) and not 0 < self.cache < 1:
            raise ValueError(
                f"--cache {self.cache}: the threshold is a relative change between steps, between 0 and 1 (0.05 to "
                f"0.3)."
            )
        if self.offload_model and self.group_offload:
            raise ValueError(
                "--offload_model moves whole models and --group_offload the transformer's blocks: pass one (group "
                "offloading needs less GPU memory)."
            )
        if self.use_cuda_graphs:
            clashing = [
                name
                for name, on in (
                    ("--cache", self.cache is not None),
                    ("--offload_model", self.offload_model),
                    ("--group_offload", self.group_offload),
                    (f"--num_gpus {self.num_gpus}", self.num_gpus > 1),
                )
                if on
            ]
            if clashing:
                raise ValueError(
                    f"--use_cuda_graphs replays a recorded forward, which cannot read the GPU or copy from the host "
                    f"as {clashing[0]} does: drop one of the two."
                )
        if self.prompt_refiner and self.disable_prompt_refiner:
            raise ValueError("--prompt_refiner turns the refiner on and --disable_prompt_refiner off: pass one.")
        if self.offload_prompt_refiner and not self.prompt_refiner:
            raise ValueError(
                "--offload_prompt_refiner places the refiner, which runs only with --prompt_refiner: add it."
            )
        if not 0 < self.cache_min_psnr < 100:
            raise ValueError(
                f"--cache_min_psnr {self.cache_min_psnr}: give a PSNR in dB between 0 and 100 (30 is close, 40 near "
                f"exact)"
            )
        if self.guidance_parallel and (self.num_gpus < 2 or self.num_gpus % 2 or (self.guidance or 7.0) <= 1):
            raise ValueError(
                "--guidance_parallel splits the two sides of guidance over two halves of the processes (each half "
                "shards the tokens when it has several): pass an even --num_gpus (under torchrun --nproc_per_node "
                "N) and a --guidance above 1."
            )
