"""The validation section: validation videos during the run (`training/validation.py`)."""

from __future__ import annotations

from dataclasses import dataclass

from ...utils.flags import Flags, flag


@dataclass(frozen=True)
class ValidationConfig(Flags):
    """Validation videos during the run (`training/validation.py`)."""

    validation_prompt: str | None = flag(None, "generate a validation video with this prompt every --validation_steps")
    validation_image: str | None = flag(
        None, "image the validation video continues (default: the first frame of --validation_video or of a clip)"
    )
    validation_video: str | None = flag(
        None, "a held-out clip: the validation continues its first frame and is scored (PSNR, SSIM) against it"
    )
    validation_steps: int = flag(None, "validate every N steps (default: at every checkpoint)", at_least=1)
    validation_epochs: int | None = flag(
        None, "validate every N passes over the clips (instead of --validation_steps)", at_least=1
    )
    num_validation_videos: int = flag(
        1, "videos per validation, from seeds --seed, --seed + 1, ...", at_least=1, at_most=64
    )
    validation_num_frames: int | None = flag(
        None, "frames of the validation video (default: --num_frames)", at_least=1, at_most=1001
    )
    validation_num_inference_steps: int = flag(35, "sampling steps of the validation video", at_least=1, at_most=1000)
    validation_num_chunks: int = flag(
        1,
        "a long validation video: this many chunks, each continuing the last frame of the one before (as "
        "infer_video2world.py --num_chunks); with --validation_video, PSNR/SSIM per chunk as far as the clip reaches",
        at_least=1,
        at_most=100,
    )  # long_video.MAX_CHUNKS
    validation_live: bool = flag(False, "also validate the live weights, not only the EMA")

    def check(self) -> None:
        super().check()
        if self.validation_epochs and self.validation_steps:
            raise ValueError("--validation_epochs and --validation_steps both say when to validate: pass one.")
        if self.validation_num_frames is not None and (self.validation_num_frames - 1) % 4:
            raise ValueError(f"--validation_num_frames must be 4k+1, got {self.validation_num_frames}.")
        if (self.validation_image or self.validation_video) and not self.validation_prompt:
            raise ValueError("--validation_image/--validation_video need a --validation_prompt.")
