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
import logging
from pathlib import Path
from typing import Any, Callable

import numpy as np
import PIL.Image
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
from diffusers.utils.torch_utils import randn_tensor
from diffusers.video_processor import VideoProcessor
from transformers import T5EncoderModel, T5TokenizerFast

from ..choices import DEFAULT_NEGATIVE_PROMPT
from ..models.fp8 import quantize_blocks_to_fp8
from ..models.latents import decode_latents
from ..models.preconditioning import SIGMA_CONDITIONING, conditioning_mask, denoise
from ..models.sample_shape import latent_shape, vae_space_stride
from ..models.text_encoding import MAX_TEXT_TOKENS, embed_prompts
from .guardrail import GUARDRAIL_NOTICE, check_prompts, checked_videos, default_safety_checker
from .inputs import check_conditioning_inputs, diffusers_conditioning, nvidia_conditioning
from .pipeline_folder import make_stock_loadable, saved_sampler
from .sampling import SIGMA_MAX, sampling_scheduler
from .scheduler import CosmosMultistepScheduler
from .scheduler_few_step import CosmosFewStepScheduler
from .sparse_attention import enable_sparse_attention
from .step_cache import StepCache

logger = logging.getLogger(__name__)


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
        sampler = None if "scheduler" in kwargs else saved_sampler(cls, pretrained_model_name_or_path, kwargs)
        if sampler is not None:
            kwargs["scheduler"] = sampler
        kwargs.setdefault("use_safetensors", True)  # never a pickled .bin, which can run code as it loads
        return super().from_pretrained(pretrained_model_name_or_path, **kwargs)

    def save_pretrained(self, save_directory: str | Path, **kwargs) -> None:
        """diffusers' saving, into a folder that diffusers' own `Cosmos2VideoToWorldPipeline` loads as well
        (`pipeline_folder.make_stock_loadable`): NVIDIA's sampler, when this pipeline holds it, is kept beside
        the Euler scheduler the stock pipeline drives, and `from_pretrained` reads it back."""
        super().save_pretrained(save_directory, **kwargs)
        make_stock_loadable(Path(save_directory), self.scheduler, type(self).__name__)

    # ------------------------------------------------------------------ inputs

    check_inputs = staticmethod(check_conditioning_inputs)

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
        return enable_sparse_attention(self.transformer)

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
            check_prompts(self.safety_checker, prompt, device)

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
        processor = self.video_processor
        if diffusers_compat:
            clean, cond_frames = diffusers_conditioning(
                self.vae, processor, image, video, height, width, num_frames, generator, device
            )
        else:
            clean, cond_frames = nvidia_conditioning(
                self.vae, processor, image, video, num_conditional_frames, height, width, num_frames, device
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
        scheduler = sampling_scheduler(self.scheduler, num_inference_steps, device, diffusers_compat)
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
                pixels = checked_videos(self.safety_checker, self.video_processor, pixels, device)
            frames = self.video_processor.postprocess_video(pixels, output_type=output_type)
        self.maybe_free_model_hooks()
        return CosmosPipelineOutput(frames=frames) if return_dict else (frames,)
