"""Step distillation: a post-trained Video2World teacher made into an N-step student that needs no guidance
(`train_video2world.py --distill_steps N`).

**Why DMD2.** Distribution matching (DMD2, Yin et al. 2024) is what NVIDIA distils Cosmos-Predict2.5 with
(cosmos-predict2.5 `cosmos_predict2/_src/predict2/distill/`, a Video2World DMD2 model among them) and it holds at
4 steps on video. The consistency alternatives (sCM/rCM, Cosmos 3) need forward-mode derivatives through attention,
which torch's flash and cuDNN attention kernels do not have, so the 720p attention would fall back to the math
kernel; DMD2 needs only the forward and backward passes our training step already runs.

**Three networks, one base.** The teacher is the frozen base (with `--dit_path` loaded and `--lora_path` fused
into it, as generation loads them); the student and the fake score ("critic") are two LoRA adapters over it,
both starting at zero, i.e. at the teacher (DMD2 starts both from the teacher). So the 2B fits one 80 GB GPU:
one copy of the weights, two small adapters and their optimizer state.

**The two updates**, alternating: every `--student_update_freq`-th step updates the student, the others the
critic (NVIDIA's 5: four critic updates a student update). Both start by simulating the student as it samples
(`generation/scheduler_few_step.py`): from `sigma_0 * eps`, `n` of its steps (n drawn from 1..N), noising each x0 to
the next level with the initial noise; only the last evaluation carries gradients ("backward simulation", DMD2 4.5).

- student: its x0 is noised to a level sigma_D; the distribution-matching gradient is `x0_fake - x0_teacher`
  there, the teacher with classifier-free guidance folded in (`x0_c + w (x0_c - x0_u)`, the unconditional side
  on the zero text embedding the teacher was trained with), divided per sample by the mean `|x0_student -
  x0_teacher|`; the loss is the squared distance to the detached, shifted target, so its gradient is that.
- critic: the teacher's own training loss (`objective.video2world_loss`: sigma draws, weighting, text dropout)
  on the student's detached samples, so the fake score tracks the student's distribution as the teacher tracked
  the data's.

Both noise levels come from the teacher's training distribution (capped at the sampler's sigma_max), where its
score is good; NVIDIA draws log-normal levels of its own (p_mean -0.8 and 0, p_std 1.6) on TrigFlow time.
Conditioning frames stay clean everywhere, as in training (1 or 2 latent frames, drawn per sample).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import CosmosTransformer3DModel
from peft import LoraConfig

from ..generation.scheduler_few_step import few_step_sigmas
from ..models.preconditioning import conditioning_mask, denoise
from .objective import TrainingDraws, video2world_loss
from .sections import DistillConfig, WeightsConfig

STUDENT, FAKE_SCORE = "student", "fake_score"
# The adapters' names, as they appear in parameter names (`...to_q.lora_A.student.weight`).
ADAPTERS = (STUDENT, FAKE_SCORE)


def add_distillation_adapters(
    transformer: CosmosTransformer3DModel, rank: int, alpha: int, target_modules: list[str], seed: int
) -> None:
    """Freeze the teacher's weights and add the student's and the fake score's LoRA adapters (B = 0: both start
    as the teacher), both trainable; the student is active. Seeded like `model.apply_lora`."""
    transformer.requires_grad_(False)
    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Already found a `peft_config`", UserWarning)  # two adapters: meant
        torch.manual_seed(seed)
        for name in ADAPTERS:
            config = LoraConfig(r=rank, lora_alpha=alpha, init_lora_weights=True, target_modules=target_modules)
            transformer.add_adapter(config, adapter_name=name)
    use_adapter(transformer, STUDENT)  # before the line below: PEFT's switch turns the other adapter's grads off
    for name, param in transformer.named_parameters():
        param.requires_grad_(any(f".{adapter}." in name for adapter in ADAPTERS))


def use_adapter(transformer: CosmosTransformer3DModel, name: str | None) -> None:
    """Make `name` the adapter the transformer computes with (None: the teacher, no adapter).

    PEFT's switches also set `requires_grad` on the adapters (the active one on, the rest off); that changes
    nothing here, since each forward runs with gradients only through the adapter it is meant to train."""
    if name is None:
        transformer.disable_adapters()
    else:
        transformer.enable_adapters()
        transformer.set_adapter(name)


def fuse_teacher_lora(transformer: CosmosTransformer3DModel, lora_path: str) -> None:
    """Merge the teacher's post-trained LoRA (`--lora_path`, our `<output_dir>/lora` export or its file) into
    the base weights, as generation applies it, so the teacher is the base with no adapter."""
    path = Path(lora_path)
    transformer.load_lora_adapter(str(path), adapter_name="teacher", prefix="transformer", use_safetensors=True)
    transformer.fuse_lora(adapter_names=["teacher"])
    transformer.delete_adapters("teacher")


def merged_student(
    state_dict: dict[str, torch.Tensor], scale: float, adapter: dict[str, torch.Tensor] | None = None
) -> dict[str, torch.Tensor]:
    """The student as a plain Video2World transformer's state dict: each LoRA'd layer's base weight plus
    `scale * B @ A` of the student adapter (from `adapter`, e.g. its EMA, else from `state_dict`), in fp32, under
    the plain layer's names; the fake score's tensors dropped. `scale` is the adapter's alpha / rank."""
    adapter = adapter if adapter is not None else state_dict
    merged = {}
    for name, tensor in state_dict.items():
        if ".lora_" in name:
            continue
        if ".base_layer." not in name:
            merged[name] = tensor
            continue
        layer, _, kind = name.rpartition(".base_layer.")
        tensor = tensor.float()
        if kind == "weight":
            down, up = adapter[f"{layer}.lora_A.{STUDENT}.weight"], adapter[f"{layer}.lora_B.{STUDENT}.weight"]
            tensor = tensor + scale * (up.float() @ down.float())
        merged[f"{layer}.{kind}"] = tensor
    return merged


def student_scale(weights: WeightsConfig) -> float:
    """The student adapter's scale (alpha / rank, as PEFT applies it) of a distillation's resolved weights."""
    return weights.lora_alpha / weights.lora_rank


def student_nets(
    weights: dict[str, torch.Tensor], ema: dict[str, torch.Tensor] | None, scale: float
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor] | None]:
    """The student's live and EMA weights as plain Video2World nets (`merged_student`), from the training
    transformer's whole state dict and the EMA of its adapters: what checkpoints, validation and exports hold."""
    return merged_student(weights, scale), (merged_student(weights, scale, ema) if ema is not None else None)


@dataclass(frozen=True)
class DistillBatch:
    """What both updates read: the clean latents `[B, C, T, H, W]` (their first 1 or 2 latent frames
    condition), the T5 embeddings `[B, 512, d]`, and the step's draws."""

    latents: torch.Tensor
    text: torch.Tensor
    draws: TrainingDraws
    student_steps: int  # how many student steps this update simulates (1..N)
    render_noise: torch.Tensor  # the noise its x0 is brought to a level sigma_D with, like `latents`
    cond_mask: torch.Tensor  # `[B, 1, T, 1, 1]`, 1 on the conditioning latent frames


class DMD2:
    """The DMD2 losses of one step (see the module docstring); the trainer runs backward on what they return."""

    def __init__(self, config: DistillConfig, sigma_max: float):
        if not config.distill_steps:
            raise ValueError("DMD2 needs the student's --distill_steps.")
        self.config, self.num_steps, self.sigma_max = config, config.distill_steps, sigma_max
        self.sigmas = [float(s) for s in few_step_sigmas(config.distill_steps, sigma_max=sigma_max)]

    def updates_student(self, step: int) -> bool:
        """Whether optimizer step `step` (0-based) updates the student (else the fake score)."""
        return step % self.config.student_update_freq == 0

    def draw(self, latents: torch.Tensor, text: torch.Tensor, draws: TrainingDraws, generator) -> DistillBatch:
        """The step's extra draws (after `draws`, from the same CPU generator: a pure function of seed and step)."""
        steps = int(torch.randint(1, self.num_steps + 1, (1,), generator=generator))
        render_noise = torch.randn(latents.shape, generator=generator).to(latents.device)
        cond_mask = conditioning_mask(draws.num_cond_frames.to(latents.device), latents.shape[2])
        return DistillBatch(latents, text, draws, steps, render_noise, cond_mask)

    def simulate_student(self, net, model, batch: DistillBatch, grad: bool) -> torch.Tensor:
        """The student's x0 after `batch.student_steps` of its steps from `sigma_0 * eps`, with gradients
        through the last evaluation only when `grad`."""
        use_adapter(model, STUDENT)
        noise = batch.draws.noise.to(batch.latents.device)
        x = noise * self.sigmas[0]
        for k in range(batch.student_steps):
            last = k == batch.student_steps - 1
            sigma = torch.full((x.shape[0],), self.sigmas[k], device=x.device)
            with torch.set_grad_enabled(grad and last):
                x0 = denoise(net, x, sigma, batch.latents, batch.cond_mask, batch.text)
            if not last:
                x = x0 + self.sigmas[k + 1] * noise
        return x0

    def _critic_sigma(self, batch: DistillBatch) -> torch.Tensor:
        return batch.draws.sigma.to(batch.latents.device).clamp(max=self.sigma_max)

    def student_loss(self, net, model, batch: DistillBatch) -> torch.Tensor:
        """The distribution-matching loss of the student (gradients reach the student adapter only)."""
        x0_student = self.simulate_student(net, model, batch, grad=True)
        sigma, cond_mask = self._critic_sigma(batch), batch.cond_mask
        noisy = x0_student.detach() + sigma.view(-1, 1, 1, 1, 1) * batch.render_noise
        with torch.no_grad():
            use_adapter(model, FAKE_SCORE)
            x0_fake = denoise(net, noisy, sigma, batch.latents, cond_mask, batch.text)
            use_adapter(model, None)
            x0_teacher = denoise(net, noisy, sigma, batch.latents, cond_mask, batch.text)
            if self.config.guidance > 1:
                unconditional = denoise(net, noisy, sigma, batch.latents, cond_mask, torch.zeros_like(batch.text))
                x0_teacher = x0_teacher + self.config.guidance * (x0_teacher - unconditional)
            # The student again: the backward recomputes its checkpointed forward with the active adapter.
            use_adapter(model, STUDENT)
            generated = 1 - cond_mask  # [B, 1, T, 1, 1]
            per_sample = ((x0_student - x0_teacher).abs() * generated).sum((1, 2, 3, 4))
            elements = generated.sum((1, 2, 3, 4)) * x0_student[0, :, 0].numel()
            normaliser = (per_sample / elements).clamp_min(1e-6).view(-1, 1, 1, 1, 1)
            target = x0_student - (x0_fake - x0_teacher) / normaliser
        return 0.5 * ((x0_student - target.detach()) ** 2).mean()

    def fake_score_loss(self, net, model, batch: DistillBatch) -> torch.Tensor:
        """The fake score's denoising loss on the student's samples (the teacher's own objective)."""
        with torch.no_grad():
            x0_student = self.simulate_student(net, model, batch, grad=False)
        use_adapter(model, FAKE_SCORE)  # and active through the backward (its recompute under checkpointing)
        return video2world_loss(
            net,
            x0_student,
            batch.render_noise,
            self._critic_sigma(batch),
            batch.draws.num_cond_frames,
            batch.text,
            batch.draws.drop_text,
        )

    def loss(self, step: int, net, model, batch: DistillBatch) -> torch.Tensor:
        """This step's loss: the student's on its steps, the fake score's on the others. `net` is the module to
        call (wrapped by DDP/FSDP), `model` the unwrapped one whose adapters are switched."""
        if self.updates_student(step):
            return self.student_loss(net, model, batch)
        return self.fake_score_loss(net, model, batch)
