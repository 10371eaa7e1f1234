"""The distill section: step distillation of the loaded model (the teacher) into a few-step student
(`training/distill.py`)."""

from __future__ import annotations

from dataclasses import dataclass

from ...choices import MAX_DISTILL_STEPS
from ...utils.flags import Flags, flag


@dataclass(frozen=True)
class DistillConfig(Flags):
    """Step distillation of the loaded model (the teacher) into a few-step student (`training/distill.py`)."""

    distill_steps: int | None = flag(
        None,
        "distil the loaded model (the teacher: --dit_path, --lora_path) into a student that generates in this many "
        "steps (1-8) without guidance (DMD2, with the student and its critic as two LoRA adapters of --lora_rank "
        "over the frozen teacher); its presence makes the run a distillation",
        at_least=1,
        at_most=MAX_DISTILL_STEPS,
    )
    guidance: float = flag(
        7.0,
        "with --distill_steps: the teacher's classifier-free guidance, folded into the student (1: none)",
        interval=(0.0, 100.0, True),
    )
    lora_path: str | None = flag(
        None, "with --distill_steps: the teacher's LoRA adapter (<output_dir>/lora of a LoRA run), fused into it"
    )
    student_update_freq: int = flag(
        5,
        "with --distill_steps: every Nth step updates the student, the others its critic (NVIDIA's 5)",
        at_least=1,
        at_most=1000,
    )

    def check(self) -> None:
        super().check()
        if self.distill_steps is None and self.lora_path:
            raise ValueError(
                "--lora_path is the teacher of a distillation: pass --distill_steps N too (to post-train on from a "
                "LoRA, continue its run with the same --output_dir)."
            )
