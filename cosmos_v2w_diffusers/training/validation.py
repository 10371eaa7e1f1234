"""Validation during training: a video from the EMA (and, if asked, the live) weights every
`--validation_steps`, written to `<output_dir>/validation/step_{N:09d}.mp4` and logged to the trackers.

With `--validation_video` (a held-out clip) the generation continues the clip's first frame and is scored
against the clip's real frames (PSNR and SSIM over the generated frames), so a run shows whether
post-training helps or hurts. The generating transformer is a second copy, built once, that receives the
weights at each validation and lives on the CPU in between: validation takes no GPU memory from training.
"""

from __future__ import annotations

import io
import logging
from pathlib import Path

import decord
import PIL.Image
import torch
from diffusers.utils import export_to_video
from torchvision.transforms.v2 import functional as TF

from ..choices import DEFAULT_NEGATIVE_PROMPT
from ..generation.inputs import open_image
from ..generation.jobs import long_video_frames
from ..generation.long_video import generate_long_video
from ..generation.pipeline import CosmosVideo2WorldPipeline
from ..generation.scheduler import CosmosMultistepScheduler
from ..generation.scheduler_few_step import CosmosFewStepScheduler
from ..generation.video_metrics import psnr, ssim
from ..models.components import load_text_encoder, load_transformer, resolve_pretrained
from ..models.text_encoding import MAX_TEXT_TOKENS, embed_prompts
from .model import apply_lora
from .sections import DataConfig, ValidationConfig, WeightsConfig

logger = logging.getLogger(__name__)


def read_validation_inputs(
    config: ValidationConfig, data: DataConfig, first_clip: str
) -> tuple[PIL.Image.Image, torch.Tensor | None]:
    """The image validation continues, and the held-out clip's frames (`read_clip`, at the training samples' size
    in `data`; None without `--validation_video`): read before any model loads, so a bad file is a one-line error
    naming its flag. A long validation video (`--validation_num_chunks`) is scored as far as the clip reaches."""
    num_frames = config.validation_num_frames or data.num_frames
    video = config.validation_video
    wanted = long_video_frames(num_frames, config.validation_num_chunks, 1)
    real = read_clip(video, num_frames, data.height, data.width, wanted) if video else None
    if config.validation_image:
        return open_image(config.validation_image, "--validation_image"), real
    # the first frame of the held-out clip, or of the first training clip
    return PIL.Image.fromarray(_reader(video or first_clip)[0].asnumpy()), real


def _reader(path: str) -> decord.VideoReader:
    try:
        return decord.VideoReader(path, ctx=decord.cpu(0))
    except (decord.DECORDError, RuntimeError) as exc:
        raise ValueError(
            f"--validation_video {path} cannot be decoded as a video ({str(exc).splitlines()[0][:200]}); pass an "
            f"mp4 clip."
        ) from None


def read_clip(path: str, num_frames: int, height: int, width: int, wanted: int | None = None) -> torch.Tensor:
    """The first `num_frames` frames of a clip (up to `wanted` where it has them), resized as training samples are:
    float `[T, 3, H, W]` in [0, 1]."""
    reader = _reader(path)
    if len(reader) < num_frames:
        raise ValueError(
            f"--validation_video {path} has {len(reader)} frames; it needs {num_frames} (--validation_num_frames)."
        )
    num_frames = min(len(reader), max(num_frames, wanted or 0))
    frames = torch.from_numpy(reader.get_batch(list(range(num_frames))).asnumpy()).permute(0, 3, 1, 2)
    return TF.resize(frames, [height, width], antialias=True).float() / 255


def chunk_frames(num_frames: int, num_chunks: int, reach: int) -> list[slice]:
    """The new frames of each chunk of a long validation video (`--validation_num_chunks` > 1) of `num_frames`-frame
    chunks that a held-out clip's `reach` frames cover (chunk 1 without its conditioning frame); none for a
    one-chunk video."""
    if num_chunks == 1:
        return []
    bounds = [1] + [long_video_frames(num_frames, k + 1, 1) for k in range(num_chunks)]
    return [slice(a, min(b, reach)) for a, b in zip(bounds, bounds[1:]) if a < reach]


class Validator:
    """When to validate (`should_validate`), and what: on the main process it builds what generation needs once
    (text embeddings, a second transformer, the pipeline), then `validate`s. Built on every rank, since the
    weights it generates with are gathered by all of them."""

    def __init__(
        self,
        config: ValidationConfig,
        data: DataConfig,
        weights: WeightsConfig,
        distill_steps: int | None,
        folder: Path,
        preset,
        vae,
        inputs: tuple[PIL.Image.Image, torch.Tensor | None] | None,
        compute_dtype: torch.dtype,
        device: torch.device,
        is_main_process: bool,
    ):
        """`config`: when and what to validate; `data`: the samples' size, the prompts' length and the seed;
        `weights`: the base the validation copy is built from (and a LoRA run's adapter shape); `distill_steps`:
        a distillation's student, sampled as it was distilled; `folder`: where the videos go."""
        self.config, self.data = config, data
        prompt = config.validation_prompt
        self.generates = bool(prompt) and is_main_process
        self.last: dict | None = None  # the latest validation's video and metrics, for the model card
        if not self.generates or prompt is None:
            return
        self.device, self.dtype = device, compute_dtype
        self.num_frames = config.validation_num_frames or data.num_frames
        self.folder = folder
        assert inputs is not None, "a validating process reads its inputs first (read_validation_inputs)"
        self.image, self.real = inputs
        # The prompts are encoded once; the text encoder is freed right after (T5-XXL is 11B parameters).
        pretrained = resolve_pretrained(preset, weights.pretrained_model_name_or_path)
        tokenizer, encoder = load_text_encoder(pretrained, torch.float32, **weights.hub_kwargs())
        embeds = embed_prompts([prompt, DEFAULT_NEGATIVE_PROMPT], tokenizer, encoder, data.max_sequence_length)
        embeds = torch.nn.functional.pad(embeds, (0, 0, 0, MAX_TEXT_TOKENS - embeds.shape[1]))  # as training pads
        self.prompt_embeds, self.negative_embeds = embeds.split(1)
        del tokenizer, encoder
        transformer = load_transformer(
            preset, weights.pretrained_model_name_or_path, compute_dtype, **weights.hub_kwargs()
        )
        # A distillation validates its student: a plain net (the trainer merges it), sampled as it was distilled.
        self.adapter_only = weights.train_architecture == "lora" and not distill_steps
        if self.adapter_only:
            targets = weights.lora_target_modules.split(",")
            apply_lora(transformer, weights.lora_rank, weights.lora_alpha, targets, data.seed)
        scheduler = CosmosFewStepScheduler(distill_steps) if distill_steps else CosmosMultistepScheduler()
        self.num_inference_steps = distill_steps or config.validation_num_inference_steps
        self.pipe = CosmosVideo2WorldPipeline(
            text_encoder=None,
            tokenizer=None,
            transformer=transformer.eval(),
            vae=vae,
            scheduler=scheduler,
            disable_guardrail=True,
        )
        self.pipe.set_progress_bar_config(disable=True)

    def should_validate(self, step: int) -> bool:
        """Whether validation follows optimizer step `step` (1-based): every `--validation_steps` with a prompt."""
        return bool(self.config.validation_prompt) and step % self.config.validation_steps == 0

    def run(
        self, step: int, weights: dict[str, torch.Tensor], name: str
    ) -> tuple[list[tuple[Path, torch.Tensor]], dict[str, float]]:
        """Generate `--num_validation_videos` videos with `weights` (a full state dict of the training transformer),
        from seeds `--seed`, `--seed + 1`, ..., and write them.

        Returns each video's path and frames `[T, 3, H, W]` in [0, 1], and their mean metrics (none without
        `--validation_video`).
        """
        transformer, vae = self.pipe.transformer, self.pipe.vae
        if self.adapter_only:
            # Only the adapter changes; the base stays the one loaded from the weights (bf16 even when training
            # stores it in fp8): users generate with the LoRA on the full-precision base.
            adapter = {k: v for k, v in weights.items() if "lora_" in k}
            missing, unexpected = transformer.load_state_dict(adapter, strict=False)
            if unexpected or any("lora_" in k for k in missing):
                raise RuntimeError(f"The validation copy's adapter does not match the run's: {unexpected or missing}")
        else:
            transformer.load_state_dict(weights)
        vae_device = vae.device
        transformer.to(self.device)
        vae.to(self.device)
        try:
            videos = [self._generate(self.data.seed + i) for i in range(self.config.num_validation_videos)]
        finally:
            transformer.to("cpu")
            vae.to(vae_device)
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
        self.folder.mkdir(parents=True, exist_ok=True)
        written = []
        for i, frames in enumerate(videos):
            suffix = ("" if name == "ema" else f"_{name}") + (f"_{i}" if i else "")
            path = self.folder / f"step_{step:09d}{suffix}.mp4"
            export_to_video(list(frames.permute(0, 2, 3, 1).numpy()), str(path), fps=16)
            written.append((path, frames))
        metrics = {}
        if self.real is not None:  # the generated frames against the real ones (the conditioning frame left out)
            reach = min(len(self.real), len(videos[0]))
            metrics = {
                f"validation/{name}/psnr": sum(psnr(f[1:reach], self.real[1:reach]) for f in videos) / len(videos),
                f"validation/{name}/ssim": sum(ssim(f[1:reach], self.real[1:reach]) for f in videos) / len(videos),
            }
            for chunk, frames in enumerate(
                chunk_frames(self.num_frames, self.config.validation_num_chunks, reach)
            ):  # a long video's drift, chunk by chunk
                metrics[f"validation/{name}/psnr_chunk_{chunk + 1}"] = sum(
                    psnr(f[frames], self.real[frames]) for f in videos
                ) / len(videos)
                metrics[f"validation/{name}/ssim_chunk_{chunk + 1}"] = sum(
                    ssim(f[frames], self.real[frames]) for f in videos
                ) / len(videos)
        logger.info(
            "Validation (%s weights) at step %d: %s %s",
            name,
            step,
            ", ".join(str(path) for path, _ in written),
            " ".join(f"{k.rsplit('/', 1)[1]}={v:.3f}" for k, v in metrics.items()),
        )
        self.last = {"video": str(written[0][0]), **metrics}
        return written, metrics

    def _generate(self, seed: int) -> torch.Tensor:
        """One validation video from `seed`: `[T, 3, H, W]` in [0, 1] on the CPU. A long one
        (`--validation_num_chunks`) from NVIDIA's noise for `seed + chunk` (`long_video.generate_long_video`)."""
        if self.config.validation_num_chunks > 1:
            frames = generate_long_video(
                self.pipe,
                self.config.validation_num_chunks,
                image=self.image,
                seed=seed,
                height=self.data.height,
                width=self.data.width,
                num_frames=self.num_frames,
                prompt_embeds=self.prompt_embeds,
                negative_prompt_embeds=self.negative_embeds,
                num_inference_steps=self.num_inference_steps,
            )
            assert frames is not None  # collected: no on_chunk
            return torch.from_numpy(frames).permute(0, 3, 1, 2)
        return (
            self.pipe(
                image=self.image,
                prompt_embeds=self.prompt_embeds,
                negative_prompt_embeds=self.negative_embeds,
                height=self.data.height,
                width=self.data.width,
                num_frames=self.num_frames,
                num_inference_steps=self.num_inference_steps,
                generator=torch.Generator(self.device).manual_seed(seed),
                output_type="pt",
            )
            .frames[0]
            .cpu()
        )

    def validate(self, iteration: int, state: dict, ema: dict | None, accelerator) -> None:
        """Run validation with the EMA weights (`state` with the EMA's tensors) and, with `--validation_live`
        or without an EMA, the live ones; log the metrics and videos to the run's trackers. Only the main
        process generates."""
        if not self.generates:
            return
        runs = [("ema", {**state, **ema})] if ema else [("live", state)]
        if ema and self.config.validation_live:
            runs.append(("live", state))
        for name, weights in runs:
            written, metrics = self.run(iteration, weights, name)
            accelerator.log(metrics, step=iteration)
            for i, (path, frames) in enumerate(written):
                for tracker in accelerator.trackers:
                    log_video(tracker, name + (f"_{i}" if i else ""), path, frames, iteration)


# Frames of a validation video shown in TensorBoard: every 4th, the first (the conditioning frame) included.
TENSORBOARD_FRAME_STRIDE = 4


def gif_summary(tag: str, frames: torch.Tensor, fps: int = 16):
    """A TensorBoard image summary holding `frames` (float `[T, 3, H, W]` in [0, 1]) as an animated GIF: what
    torch's `add_video` writes."""
    from tensorboard.compat.proto.summary_pb2 import Summary

    pixels = (frames.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    images = [PIL.Image.fromarray(frame) for frame in pixels]
    buffer = io.BytesIO()
    images[0].save(buffer, format="GIF", save_all=True, append_images=images[1:], duration=1000 // fps, loop=0)
    height, width = pixels.shape[1:3]
    image = Summary.Image(height=height, width=width, colorspace=3, encoded_image_string=buffer.getvalue())
    return Summary(value=[Summary.Value(tag=tag, image=image)])


def log_video(tracker, name: str, path: Path, frames: torch.Tensor, iteration: int) -> None:
    """A validation video to TensorBoard (an animated GIF, which its Images tab plays, and every
    `TENSORBOARD_FRAME_STRIDE`-th frame as a strip) or W&B (`wandb.Video`). `frames`: float `[T, 3, H, W]` in [0, 1].

    torch's `SummaryWriter.add_video` encodes its GIF with `moviepy.editor`, which moviepy 2 removed (without it
    torch prints a line and logs nothing), so the GIF is encoded here with PIL into the same summary."""
    try:
        if tracker.name == "tensorboard":
            shown = frames[::TENSORBOARD_FRAME_STRIDE].clamp(0, 1)  # [N, 3, H, W]
            tracker.writer.add_images(f"validation/{name}", shown, iteration, dataformats="NCHW")
            tracker.writer.file_writer.add_summary(gif_summary(f"validation/{name}/video", frames), iteration)
        elif tracker.name == "wandb":
            import wandb

            tracker.log({f"validation/{name}": wandb.Video(str(path))}, step=iteration)
    except Exception as exc:  # a tracker's optional video support (moviepy, ...) must not stop training
        logger.warning("Could not log the validation video to %s (%s); it is at %s", tracker.name, exc, path)
