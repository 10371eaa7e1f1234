"""`CosmosVideo2WorldPipeline`: Cosmos-Predict2 Video2World sampling as NVIDIA does it, in diffusers form.

Differences from diffusers' `Cosmos2VideoToWorldPipeline` (docs/recipe.md, "Inference"), all on by default:
- NVIDIA's sampler (`CosmosMultistepScheduler`) and a final guided x0 evaluation at sigma_min;
- the transformer is called with `fps=None`, as NVIDIA trained it (diffusers scales temporal RoPE by 24/fps);
- conditioning as NVIDIA's `examples/video2world.py`: the input resized to cover and centre-cropped, a
  video's LAST 1 or 5 frames, the remaining frames black, encoded with the VAE posterior mean.
`diffusers_compat=True` reproduces diffusers' pipeline step for step instead (fps passed, last-frame
padding, a posterior sample, the plain final latents), which the tests use to prove parity.

`guidance_scale` means what it means in diffusers in both modes: `x0_cond + w (x0_cond - x0_uncond)` for w > 1,
and no guidance (the conditional x0 alone, one transformer call a step) for w <= 1. NVIDIA's sampler also mixes
for 0 < w <= 1; nobody asks for that in practice (its default is 7), and diffusers' users expect 1 to mean off.

The denoiser is `preconditioning.denoise`, the very function the training loss calls.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any, Callable

import numpy as np
import PIL.Image
import PIL.ImageOps
import torch
import torch.distributed as dist
from diffusers import (
    AutoencoderKLWan,
    CosmosTransformer3DModel,
    DiffusionPipeline,
    FlowMatchEulerDiscreteScheduler,
)
from diffusers.loaders.lora_pipeline import CosmosLoraLoaderMixin
from diffusers.pipelines.cosmos.pipeline_output import CosmosPipelineOutput
from diffusers.utils import is_cosmos_guardrail_available
from diffusers.utils.torch_utils import randn_tensor
from diffusers.video_processor import VideoProcessor
from transformers import T5EncoderModel, T5TokenizerFast

from .. import compat
from ..choices import DEFAULT_NEGATIVE_PROMPT
from ..models.attention import attention_processors
from ..models.fp8 import quantize_blocks_to_fp8
from ..models.latents import decode_latents, encode_video
from ..models.preconditioning import SIGMA_CONDITIONING, conditioning_mask, denoise
from ..models.sample_shape import check_sample_shape, latent_shape, num_latent_frames, vae_space_stride
from ..models.text_encoding import MAX_TEXT_TOKENS, embed_prompts
from .scheduler import CosmosMultistepScheduler
from .scheduler_few_step import CosmosFewStepScheduler
from .sparse_attention import enable_sparse_attention
from .step_cache import StepCache

logger = logging.getLogger(__name__)

SIGMA_MAX = 80.0
SIGMA_MIN = 0.002
GUARDRAIL_NOTICE = (
    "Cosmos guardrail disabled: generated videos are not checked for safety (NVIDIA's --disable_guardrail). "
    "You remain bound by the NVIDIA Open Model License."
)


# Where `save_pretrained` keeps NVIDIA's sampler, and the `model_index.json` keys that say so and who saved the
# folder (diffusers' loaders ignore keys that start with "_").
NVIDIA_SAMPLER_FOLDER = "scheduler_nvidia"
SAVED_SAMPLER_KEY, SAVED_BY_KEY = "_nvidia_sampler", "_saved_by"
# The samplers that folder may hold: NVIDIA's multistep sampler, or a distilled student's few-step one.
_SAMPLERS = {cls.__name__: cls for cls in (CosmosMultistepScheduler, CosmosFewStepScheduler)}


def default_safety_checker():
    """cosmos_guardrail's checker, as NVIDIA's tooling uses by default."""
    if not is_cosmos_guardrail_available():
        raise ImportError(
            "cosmos_guardrail is not installed, and NVIDIA's tooling runs its guardrail by default. Install it "
            "(`pip install cosmos_guardrail`), or run without it: `--disable_guardrail` on the command line, "
            "`disable_guardrail=True` in Python."
        )
    from cosmos_guardrail import CosmosSafetyChecker

    return CosmosSafetyChecker()


def nvidia_initial_noise(seed: int, shape: tuple[int, ...]) -> torch.Tensor:
    """NVIDIA's initial noise for `seed`: `numpy.random.RandomState(seed).standard_normal` in float32 (`latents`
    for `__call__`, which scales it by sigma_max)."""
    return torch.from_numpy(np.random.RandomState(seed).standard_normal(shape).astype(np.float32))


def check_conditioning_frames(
    available: int,
    num_conditional_frames: int,
    source: str = "the conditioning video",
    argument: str = "num_conditional_frames",
) -> None:
    """Refuse a conditioning video shorter than the frames it must give, naming `source` and the `argument` to
    change."""
    if available < num_conditional_frames:
        raise ValueError(
            f"{source} has {available} frames, fewer than {argument}={num_conditional_frames}: pass a longer video, "
            f"or condition on its last frame ({argument}=1)."
        )


def open_image(path: str | Path, flag: str) -> PIL.Image.Image:
    """The image at `path` as 8-bit RGB, turned as its EXIF orientation says (as a viewer shows it); a one-line
    `ValueError` naming `flag` for a file PIL cannot read or a decompression bomb (PIL's pixel limit)."""
    try:
        with PIL.Image.open(path) as image:
            return to_rgb(PIL.ImageOps.exif_transpose(image))
    except (OSError, PIL.UnidentifiedImageError, PIL.Image.DecompressionBombError) as exc:
        raise ValueError(f"{flag} {path} cannot be read as an image ({exc}).") from None


def to_rgb(image: PIL.Image.Image) -> PIL.Image.Image:
    """An image of any mode PIL opens -> 8-bit RGB with the values it shows.

    PIL's `convert("RGB")` clips 16- and 32-bit integer images at 255 (a 16-bit PNG turns white), reads
    float images as 0-255, and refuses some modes ("La"); those are rescaled to 8 bits here first.
    """
    if image.mode in ("I", "F") or image.mode.startswith("I;16"):
        values = np.asarray(image, dtype=np.float64)
        if image.mode.startswith("I;16") or (image.mode == "I" and values.max() > 255):
            scale = 65535.0  # 16-bit data (PIL opens 16-bit PNGs as "I;16" or "I")
        elif image.mode == "F" and values.max() <= 1.0:
            scale = 1.0  # floats in [0, 1]
        else:
            scale = 255.0
        gray = np.clip(np.round(values / scale * 255.0), 0, 255).astype(np.uint8)
        return PIL.Image.fromarray(gray, "L").convert("RGB")
    if image.mode == "La":  # premultiplied alpha: PIL converts it to LA first
        image = image.convert("LA")
    return image.convert("RGB")


class CosmosVideo2WorldPipeline(DiffusionPipeline, CosmosLoraLoaderMixin):
    r"""Video2World generation: continue an image or a video, guided by a text prompt.

    Components: `text_encoder` (T5-XXL), `tokenizer`, `transformer` (`CosmosTransformer3DModel`), `vae`
    (`AutoencoderKLWan`), `scheduler` (`CosmosMultistepScheduler` by default, or diffusers'
    `FlowMatchEulerDiscreteScheduler(use_karras_sigmas=True)`) and an optional `safety_checker`.

    The guardrail: with `safety_checker=None`, cosmos_guardrail's checker is built when installed; to run
    without it, pass `disable_guardrail=True` too (a one-line notice is logged).
    """

    model_cpu_offload_seq = "text_encoder->transformer->vae"
    _callback_tensor_inputs = ["latents", "x0", "prompt_embeds", "negative_prompt_embeds"]
    _optional_components = ["safety_checker"]

    def __init__(
        self,
        text_encoder: T5EncoderModel,
        tokenizer: T5TokenizerFast,
        transformer: CosmosTransformer3DModel,
        vae: AutoencoderKLWan,
        scheduler: CosmosMultistepScheduler | CosmosFewStepScheduler | FlowMatchEulerDiscreteScheduler,
        safety_checker: Any = None,
        disable_guardrail: bool = False,
    ):
        super().__init__()
        if safety_checker is None and not disable_guardrail:
            safety_checker = default_safety_checker()
        if safety_checker is None:
            logger.warning(GUARDRAIL_NOTICE)
        self.register_modules(
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            transformer=transformer,
            vae=vae,
            scheduler=scheduler,
            safety_checker=safety_checker,
        )
        self.register_to_config(disable_guardrail=disable_guardrail)
        self._guidance_group: dist.ProcessGroup | None = None  # set by enable_guidance_parallel
        self._step_cache: StepCache | None = None  # set by enable_step_cache
        self._guidance_scale, self._num_timesteps, self._interrupt = 7.0, 0, False  # those of the last generation
        self._current_timestep, self._sigma_conditioning = None, SIGMA_CONDITIONING
        self._round_x0_to: torch.dtype | None = None  # diffusers_compat: the model's dtype
        self.video_processor = VideoProcessor(vae_scale_factor=vae_space_stride(vae.config))

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs) -> "CosmosVideo2WorldPipeline":
        """diffusers' loading. A pipeline saved by this class keeps its saved scheduler and config (NVIDIA's
        sampler from `scheduler_nvidia/`, see `save_pretrained`); NVIDIA's repos (saved as diffusers'
        `Cosmos2VideoToWorldPipeline`) ship an Euler scheduler, which NVIDIA's sampler replaces unless a
        `scheduler` is passed."""
        hub_kwargs = {k: kwargs[k] for k in ("cache_dir", "local_files_only", "revision", "token") if k in kwargs}
        index = cls.load_config(pretrained_model_name_or_path, **hub_kwargs)
        if index.get(SAVED_SAMPLER_KEY):
            saved = CosmosMultistepScheduler.load_config(
                pretrained_model_name_or_path, subfolder=index[SAVED_SAMPLER_KEY], **hub_kwargs
            )
            sampler_class = _SAMPLERS.get(saved.get("_class_name"), CosmosMultistepScheduler)
            kwargs.setdefault("scheduler", sampler_class.from_config(saved))
        elif cls.__name__ not in (index.get("_class_name"), index.get(SAVED_BY_KEY)):
            kwargs.setdefault("scheduler", CosmosMultistepScheduler())
        kwargs.setdefault("use_safetensors", True)  # never a pickled .bin, which can run code as it loads
        return super().from_pretrained(pretrained_model_name_or_path, **kwargs)

    def save_pretrained(self, save_directory: str | Path, **kwargs) -> None:
        """diffusers' saving, into a folder that diffusers' own `Cosmos2VideoToWorldPipeline` loads as well: its
        `model_index.json` names the stock class and `scheduler/` holds the Euler scheduler the stock pipeline
        drives. NVIDIA's sampler, when this pipeline holds it, is kept beside in `scheduler_nvidia/`, which
        `from_pretrained` reads back (diffusers' loaders skip a folder their index does not name)."""
        super().save_pretrained(save_directory, **kwargs)
        folder = Path(save_directory)
        index = json.loads((folder / "model_index.json").read_text())
        index.update({"_class_name": "Cosmos2VideoToWorldPipeline", SAVED_BY_KEY: type(self).__name__})
        index.pop("disable_guardrail", None)  # ours; the stock class takes no such argument
        if isinstance(self.scheduler, tuple(_SAMPLERS.values())):
            shutil.rmtree(folder / NVIDIA_SAMPLER_FOLDER, ignore_errors=True)
            os.replace(folder / "scheduler", folder / NVIDIA_SAMPLER_FOLDER)
            FlowMatchEulerDiscreteScheduler(use_karras_sigmas=True).save_pretrained(folder / "scheduler")
            index.update(
                scheduler=["diffusers", "FlowMatchEulerDiscreteScheduler"],
                **{SAVED_SAMPLER_KEY: NVIDIA_SAMPLER_FOLDER},
            )
        (folder / "model_index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")

    # ------------------------------------------------------------------ inputs

    @staticmethod
    def check_inputs(height: int, width: int, num_frames: int, image, video, num_conditional_frames: int) -> None:
        check_sample_shape(num_frames, height, width)
        if (image is None) == (video is None):
            raise ValueError("Pass exactly one of `image` or `video` as the conditioning input.")
        if video is not None and num_conditional_frames not in (1, 5):
            raise ValueError(f"num_conditional_frames must be 1 or 5, got {num_conditional_frames}.")
        if video is not None:
            check_conditioning_frames(len(video), num_conditional_frames)

    def _pixels(self, frames, height: int, width: int, crop: bool) -> torch.Tensor:
        """A list of frames (PIL, arrays or tensors) -> `[1, 3, F, H, W]` in [-1, 1].

        `crop`: resize to cover the target and centre-crop (NVIDIA); otherwise a plain resize (diffusers).
        """
        frames = [to_rgb(f) if isinstance(f, PIL.Image.Image) else f for f in frames]
        if crop and all(isinstance(f, PIL.Image.Image) for f in frames):
            pixels = self.video_processor.preprocess(frames, height, width, resize_mode="crop")
        else:
            pixels = self.video_processor.preprocess(frames, height, width)
        return pixels.permute(1, 0, 2, 3).unsqueeze(0)  # [F, 3, H, W] -> [1, 3, F, H, W]

    def _nvidia_conditioning(self, image, video, num_conditional_frames, height, width, num_frames):
        """Clean latents of [conditioning frames, black frames...] and the number of conditioning latent frames."""
        frames = [image] if image is not None else list(video)[-num_conditional_frames:]
        cond = self._pixels(frames, height, width, crop=True)
        pixels = cond.new_full((1, 3, num_frames, height, width), -1.0)  # black
        pixels[:, :, : cond.shape[2]] = cond
        device = self._execution_device
        return encode_video(self.vae, pixels, device=device), num_latent_frames(cond.shape[2])

    def _diffusers_conditioning(self, image, video, height, width, num_frames, generator):
        """diffusers' `Cosmos2VideoToWorldPipeline.prepare_latents`: the whole input as conditioning, padded
        with its last frame, encoded with a posterior *sample* drawn from `generator`."""
        cond = self._pixels([image] if image is not None else list(video), height, width, crop=False)
        if cond.shape[2] >= num_frames:
            cond_latent_frames, pixels = num_latent_frames(num_frames), cond[:, :, -num_frames:]
        else:
            cond_latent_frames = num_latent_frames(cond.shape[2])
            pad = cond[:, :, -1:].repeat(1, 1, num_frames - cond.shape[2], 1, 1)
            pixels = torch.cat([cond, pad], dim=2)
        clean = encode_video(self.vae, pixels, sample=True, generator=generator, device=self._execution_device)
        return clean, cond_latent_frames

    # ------------------------------------------------------------------ sampling

    def enable_guidance_parallel(self, group: dist.ProcessGroup | None = None) -> None:
        """Split classifier-free guidance over the 2 processes of `group` (default: all, which must be 2):
        rank 0 evaluates the conditional x0, rank 1 the unconditional one, and one all-gather of the two
        latents per step gives both ranks the same guided x0. Every rank holds the whole model; no
        collective runs inside the transformer (context parallelism runs four per block)."""
        if dist.get_world_size(group) != 2:
            raise ValueError(f"Guidance parallelism needs exactly 2 processes, got {dist.get_world_size(group)}.")
        self._guidance_group = group or dist.group.WORLD

    # ------------------------------------------------------------------ faster generation (BENCHMARKS.md)

    def enable_step_cache(self, threshold: float) -> StepCache:
        """Skip the transformer's blocks after the first where the first block's residual changed by less than
        `threshold` since the last step (`generation/step_cache.py`); each generation logs how many were skipped. A
        second call replaces the first's threshold."""
        self.disable_step_cache()
        cache = self._step_cache = StepCache(self.transformer, threshold)
        return cache

    def disable_step_cache(self) -> None:
        """Every block runs at every step again."""
        if self._step_cache is not None:
            self._step_cache.remove()
            self._step_cache = None

    def enable_sparse_attention(self) -> int:
        """NVIDIA's neighbourhood attention (natten) in its sparse layers (`generation/sparse_attention.py`); returns
        how many layers are sparse."""
        if compat.model_parallel_config(self.transformer) is not None:
            raise ValueError(
                "--sparse_attention with context parallelism is not supported: drop one, or use --num_gpus 2 "
                "--guidance_parallel (no token sharding)."
            )
        return enable_sparse_attention(self.transformer, attention_processors(self.transformer, "self"))

    def enable_fp8(self) -> int:
        """The transformer blocks' linear layers in fp8 (`models/fp8.py`): weights stored in e4m3 with a scale per
        output channel, and on Hopper or newer GPUs the matmuls run on the fp8 units with each token's activations
        scaled to e4m3. Returns how many layers were converted."""
        return quantize_blocks_to_fp8(self.transformer, fp8_matmul=True)

    def _x0(self, x, sigma, clean, cond_mask, text, fps, side: str) -> torch.Tensor:
        """One transformer evaluation for guidance side `side` ("cond" or "uncond"), through the step cache."""
        cached = self._step_cache.side(side) if self._step_cache is not None else contextlib.nullcontext()
        with cached:
            return denoise(
                self.transformer, x, sigma, clean, cond_mask, text, fps, self._sigma_conditioning, self._round_x0_to
            )

    def _guided_x0(self, x, sigma, clean, cond_mask, text, negative_text, guidance_scale, fps) -> torch.Tensor:
        """Classifier-free-guided x0: `x0_cond + w * (x0_cond - x0_uncond)`; conditioning frames stay in both."""
        sigma = torch.as_tensor(sigma, device=x.device).expand(x.shape[0])
        group = self._guidance_group
        if negative_text is None:
            return self._x0(x, sigma, clean, cond_mask, text, fps, "cond")
        if group is None:
            x0 = self._x0(x, sigma, clean, cond_mask, text, fps, "cond")
            x0_uncond = self._x0(x, sigma, clean, cond_mask, negative_text, fps, "uncond")
        else:  # this rank's side of the guidance, then both sides on every rank
            unconditional = dist.get_rank(group) == 1
            side = negative_text if unconditional else text
            mine = self._x0(x, sigma, clean, cond_mask, side, fps, "uncond" if unconditional else "cond").contiguous()
            x0, x0_uncond = torch.empty_like(mine), torch.empty_like(mine)
            dist.all_gather([x0, x0_uncond], mine, group=group)
        return x0 + guidance_scale * (x0 - x0_uncond)

    @contextlib.contextmanager
    def _guardrail_on(self, device: torch.device):
        """The safety checker on the execution device while it checks, then on the CPU, as diffusers' pipeline
        moves it (under model CPU offload the execution device is the GPU while the checker waits on the CPU)."""
        self.safety_checker.to(device)
        try:
            yield
        finally:
            self.safety_checker.to("cpu")

    def _sampling_scheduler(self, num_inference_steps: int, device, diffusers_compat: bool = False):
        """The scheduler with its timesteps set: this pipeline's, or with `diffusers_compat` the Euler scheduler
        diffusers' pipeline samples with. The user's scheduler config is never changed: the Euler
        scheduler gets diffusers' Cosmos-Predict2 settings on a copy. Any other scheduler is refused: the
        sampling loop hands it x0 predictions (or velocities, for Euler), which no other one takes."""
        if diffusers_compat and not isinstance(self.scheduler, FlowMatchEulerDiscreteScheduler):
            euler = FlowMatchEulerDiscreteScheduler(use_karras_sigmas=True)  # what diffusers' exports hold
            return self._euler_schedule(euler.config, num_inference_steps, device)
        if not isinstance(
            self.scheduler, (CosmosMultistepScheduler, CosmosFewStepScheduler, FlowMatchEulerDiscreteScheduler)
        ):
            raise ValueError(
                f"{type(self.scheduler).__name__} cannot drive this pipeline: use CosmosMultistepScheduler (NVIDIA's "
                f"sampler, the default), CosmosFewStepScheduler (a distilled student's) or "
                f"FlowMatchEulerDiscreteScheduler(use_karras_sigmas=True)."
            )
        if not isinstance(self.scheduler, FlowMatchEulerDiscreteScheduler):
            self.scheduler.set_timesteps(num_inference_steps, device=device)
            return self.scheduler
        return self._euler_schedule(self.scheduler.config, num_inference_steps, device)

    @staticmethod
    def _euler_schedule(scheduler_config, num_inference_steps: int, device) -> FlowMatchEulerDiscreteScheduler:
        """A copy of an Euler scheduler of `scheduler_config` with Karras sigmas between Cosmos' extremes, and a last
        sigma equal to the one before (a zero-length final step), as diffusers' Cosmos-Predict2 pipeline sets them."""
        scheduler = FlowMatchEulerDiscreteScheduler.from_config(scheduler_config)
        # Not `from_config` arguments: these keys exist only in the config, which set_timesteps reads.
        scheduler.register_to_config(
            sigma_max=SIGMA_MAX, sigma_min=SIGMA_MIN, sigma_data=1.0, final_sigmas_type="sigma_min"
        )
        scheduler.set_timesteps(sigmas=torch.linspace(0, 1, num_inference_steps, dtype=torch.float64), device=device)
        scheduler.sigmas[-1] = scheduler.sigmas[-2]
        return scheduler

    @property
    def guidance_scale(self) -> float:
        """The scale of the generation under way (or the last): `x0_cond + w (x0_cond - x0_uncond)`."""
        return self._guidance_scale

    @property
    def do_classifier_free_guidance(self) -> bool:
        """Guidance runs for `guidance_scale > 1`, as in diffusers' pipelines."""
        return self._guidance_scale > 1

    @property
    def num_timesteps(self) -> int:
        return self._num_timesteps

    @property
    def current_timestep(self):
        """The timestep of the step under way (None between generations), as diffusers' pipelines expose it."""
        return self._current_timestep

    @property
    def interrupt(self) -> bool:
        """Set `pipe._interrupt = True` (from `callback_on_step_end`, say) to stop after the current step."""
        return self._interrupt

    def encode_prompt(
        self,
        prompt: str | list[str] | None,
        negative_prompt: str | list[str] | None = None,
        do_classifier_free_guidance: bool = True,
        num_videos_per_prompt: int = 1,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        max_sequence_length: int = MAX_TEXT_TOKENS,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """`[B * num_videos_per_prompt, max_sequence_length, d]` embeddings of the prompts and, with guidance, of
        the negative prompts (NVIDIA's by default), zero past each prompt's length, as diffusers' Cosmos pipeline
        returns them."""
        device = device or self._execution_device
        dtype = dtype or self.transformer.dtype
        if prompt_embeds is None:
            prompts = [prompt] if isinstance(prompt, str) else list(prompt or [])
            prompt_embeds = embed_prompts(prompts, self.tokenizer, self.text_encoder, max_sequence_length, device)
        if do_classifier_free_guidance and negative_prompt_embeds is None:
            negative = negative_prompt if negative_prompt is not None else DEFAULT_NEGATIVE_PROMPT
            negatives = [negative] * prompt_embeds.shape[0] if isinstance(negative, str) else list(negative)
            negative_prompt_embeds = embed_prompts(
                negatives, self.tokenizer, self.text_encoder, max_sequence_length, device
            )
        text = prompt_embeds.to(device, dtype).repeat_interleave(num_videos_per_prompt, dim=0)
        if not do_classifier_free_guidance:
            return text, None
        assert negative_prompt_embeds is not None  # embedded above when not given
        return text, negative_prompt_embeds.to(device, dtype).repeat_interleave(num_videos_per_prompt, dim=0)

    @torch.no_grad()
    def __call__(
        self,
        image: PIL.Image.Image | np.ndarray | torch.Tensor | None = None,
        video: list | None = None,
        prompt: str | list[str] | None = None,
        negative_prompt: str | None = None,
        height: int = 704,
        width: int = 1280,
        num_frames: int = 93,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        fps: int = 16,
        num_videos_per_prompt: int = 1,
        generator: torch.Generator | None = None,
        latents: torch.Tensor | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end: Callable[["CosmosVideo2WorldPipeline", int, torch.Tensor, dict], dict] | None = None,
        callback_on_step_end_tensor_inputs: tuple[str, ...] = ("latents",),
        max_sequence_length: int = MAX_TEXT_TOKENS,
        sigma_conditioning: float = SIGMA_CONDITIONING,
        num_conditional_frames: int = 1,
        diffusers_compat: bool = False,
    ) -> CosmosPipelineOutput | tuple:
        r"""Generate `num_videos_per_prompt` videos for each prompt. The arguments up to `sigma_conditioning` are
        diffusers' `Cosmos2VideoToWorldPipeline`'s, in its order.

        Args:
            image: the first frame to continue; or `video`: frames whose last `num_conditional_frames`
                (1 or 5) condition the generation.
            prompt / prompt_embeds: the text, or its `(1, 512, d)` T5 embedding (zeros past its length).
            negative_prompt / negative_prompt_embeds: the unconditional text of classifier-free guidance
                (default: NVIDIA's negative prompt). Guidance is skipped when `guidance_scale` is 1 or less.
            height, width: multiples of 16 (720p 16:9 is 704x1280). num_frames: 4k+1 (93 at 16 fps).
            num_inference_steps, guidance_scale: default 35 and 7 (NVIDIA's); with a distilled student's
                `CosmosFewStepScheduler`, the steps it was distilled for and 1 (its guidance is built in).
            fps: the video's frame rate. It does not reach the transformer unless `diffusers_compat`.
            generator / latents: the initial noise; `latents` (`(1, 16, T, H/8, W/8)` for the 2B and 14B; in
                general `sample_shape.latent_shape`; standard normal) is scaled by sigma_max = 80.
            output_type: "pil", "np", "pt" or "latent".
            sigma_conditioning: the noise level the conditioning frames are presented at (1e-4, NVIDIA's).
            diffusers_compat: reproduce diffusers' `Cosmos2VideoToWorldPipeline` (see the module docstring), with
                its Euler sampler whatever scheduler this pipeline holds.
            num_videos_per_prompt: videos per prompt, each from its own noise (`latents`, when given, must
                hold `len(prompts) * num_videos_per_prompt` of them).
            callback_on_step_end: called as `callback(pipe, i, t, {name: tensor})` after step `i` with the
                tensors named in `callback_on_step_end_tensor_inputs` (`latents`: the current `x`, or `x0`:
                the step's guided prediction); a returned `latents` replaces the current `x`.

        Returns:
            `CosmosPipelineOutput` whose `frames` hold `len(prompts) * num_videos_per_prompt` videos, each
            prompt's videos next to each other.
        """
        self.check_inputs(height, width, num_frames, image, video, num_conditional_frames)
        student = isinstance(self.scheduler, CosmosFewStepScheduler) and not diffusers_compat
        if num_inference_steps is None:
            num_inference_steps = self.scheduler.config.num_train_steps if student else 35
        if guidance_scale is None:
            guidance_scale = 1.0 if student else 7.0
        if prompt is None and prompt_embeds is None:
            raise ValueError("Pass a `prompt` or `prompt_embeds`.")
        unknown = [name for name in callback_on_step_end_tensor_inputs if name not in self._callback_tensor_inputs]
        if unknown:
            raise ValueError(
                f"callback_on_step_end_tensor_inputs: {unknown} are not among {self._callback_tensor_inputs}."
            )
        device = self._execution_device
        self._sigma_conditioning = sigma_conditioning
        # diffusers' pipeline rounds each x0 to the model's dtype (bf16): reproduced with diffusers_compat
        self._round_x0_to = self.transformer.dtype if diffusers_compat else None
        if self.safety_checker is not None and prompt is not None:
            with self._guardrail_on(device):
                for text in [prompt] if isinstance(prompt, str) else prompt:
                    if not self.safety_checker.check_text_safety(text):
                        raise ValueError(f"Cosmos guardrail rejected the prompt: {text!r}.")

        # 1. Text.
        self._guidance_scale, self._interrupt = guidance_scale, False
        if num_videos_per_prompt < 1:
            raise ValueError(f"num_videos_per_prompt must be at least 1, got {num_videos_per_prompt}.")
        text, negative_text = self.encode_prompt(
            prompt,
            negative_prompt,
            self.do_classifier_free_guidance,
            num_videos_per_prompt,
            prompt_embeds,
            negative_prompt_embeds,
            max_sequence_length,
            device,
        )

        # 2. Conditioning latents, then the initial noise (diffusers draws its VAE sample first).
        if diffusers_compat:
            clean, cond_frames = self._diffusers_conditioning(image, video, height, width, num_frames, generator)
        else:
            clean, cond_frames = self._nvidia_conditioning(
                image, video, num_conditional_frames, height, width, num_frames
            )
        shape = (text.shape[0], *latent_shape(self.vae.config, num_frames, height, width))
        clean = clean.expand(shape).to(device)
        noise = (
            latents.to(device, torch.float32)
            if latents is not None
            else randn_tensor(shape, generator=generator, device=device, dtype=torch.float32)
        )
        x = noise * SIGMA_MAX
        cond_mask = conditioning_mask(torch.full((shape[0],), cond_frames, device=device), shape[2])
        transformer_fps = fps if diffusers_compat else None

        # 3. Sampling: one guided x0 per step, handed to the scheduler (Euler takes the velocity).
        if self._step_cache is not None:
            self._step_cache.reset()
        scheduler = self._sampling_scheduler(num_inference_steps, device, diffusers_compat)
        sigmas = scheduler.sigmas.to(device)  # copied once: a CPU sigma per step would be a host-to-device sync
        euler = isinstance(scheduler, FlowMatchEulerDiscreteScheduler)
        self._num_timesteps = len(scheduler.timesteps)
        for i, t in enumerate(self.progress_bar(scheduler.timesteps)):
            if self.interrupt:
                break
            self._current_timestep = t
            x0 = self._guided_x0(
                x, sigmas[i].float(), clean, cond_mask, text, negative_text, guidance_scale, transformer_fps
            )
            model_output = (x - x0) / sigmas[i].float() if euler else x0
            x = scheduler.step(model_output, t, x, return_dict=False)[0]
            if callback_on_step_end is not None:
                available = {"latents": x, "x0": x0, "prompt_embeds": text, "negative_prompt_embeds": negative_text}
                returned = callback_on_step_end(
                    self, i, t, {k: available[k] for k in callback_on_step_end_tensor_inputs}
                )
                x = (returned or {}).get("latents", x)
        self._current_timestep = None
        if not diffusers_compat and not student:
            # NVIDIA returns one more guided x0, evaluated at sigma_min (a student's last step returned its x0).
            x = self._guided_x0(x, sigmas[-1].float(), clean, cond_mask, text, negative_text, guidance_scale, None)
        if self._step_cache is not None:
            logger.info(self._step_cache.summary())

        # 4. Decode, guardrail, format.
        if output_type == "latent":
            frames = x
        else:
            pixels = decode_latents(self.vae, x)
            if self.safety_checker is not None:
                checked = (self.video_processor.postprocess_video(pixels, output_type="np") * 255).astype(np.uint8)
                with self._guardrail_on(device):
                    checked = np.stack([self.safety_checker.check_video_safety(v) for v in checked])
                pixels = torch.from_numpy(checked.astype(np.float32) / 255.0 * 2 - 1).permute(0, 4, 1, 2, 3)
            frames = self.video_processor.postprocess_video(pixels, output_type=output_type)
        self.maybe_free_model_hooks()
        return CosmosPipelineOutput(frames=frames) if return_dict else (frames,)
