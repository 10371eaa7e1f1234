"""The weights section: which network the run starts from and what of it trains (`training/model.py`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ...utils.flags import Flags, flag

LORA_TARGET_MODULES = "to_q,to_k,to_v,to_out.0,ff.net.0.proj,ff.net.2"


@dataclass(frozen=True)
class WeightsConfig(Flags):
    """Which network the run starts from and what of it trains (`training/model.py`)."""

    model: str = flag(
        None,
        "model size: 2B, 14B or tiny (default: the architecture of --pretrained_model_name_or_path's "
        "transformer, else 2B; a --model that contradicts the weights is refused)",
        choices=["2B", "14B", "tiny"],
    )
    pretrained_model_name_or_path: str | None = flag(None, "Hub id or local diffusers folder (default: the preset's)")
    revision: str | None = flag(None, "Hub revision (branch, tag or commit) of --pretrained_model_name_or_path")
    variant: str | None = flag(
        None,
        "weights variant of --pretrained_model_name_or_path, e.g. fp16 (diffusion_pytorch_model.fp16.safetensors)",
    )
    cache_dir: str | None = flag(None, "where Hub downloads are cached (default: huggingface_hub's)")
    dit_path: str | None = flag(None, "initialise the transformer from a native iter_N.pt (NVIDIA's or ours)")
    load_ema: bool = flag(False, "with --dit_path: take the net_ema.* weights")
    train_architecture: str = flag("full", "full post-training or LoRA", choices=["full", "lora"])
    lora_rank: int = flag(
        None, "LoRA rank (default: 16 for 2B, 32 for 14B)", aliases=["--rank"], at_least=1, at_most=1024
    )
    lora_alpha: int = flag(None, "LoRA alpha (default: equal to the rank)", at_least=1, at_most=2**16)
    lora_target_modules: str = flag(LORA_TARGET_MODULES, "comma-separated diffusers module names LoRA wraps")
    lora_dropout: float = flag(
        0.0,
        "dropout on the LoRA branch's input during training (NVIDIA's recipe: 0)",
        interval=(0.0, 1.0 - 1e-12, True),
    )
    base_precision: str = flag(
        "bf16",
        "LoRA runs: how the frozen base's block weights are stored. fp8: e4m3 with a scale per output channel, "
        "dequantised in each forward (half bf16's memory; numerics differ, see BENCHMARKS.md). nf4 is not yet offered",
        choices=["bf16", "fp8"],
    )

    def check(self) -> None:
        super().check()
        if self.revision and self.pretrained_model_name_or_path and Path(self.pretrained_model_name_or_path).is_dir():
            raise ValueError(
                f"--revision {self.revision}: --pretrained_model_name_or_path {self.pretrained_model_name_or_path} "
                f"is a local folder, which has no revisions; drop --revision (or pass the Hub id)."
            )
        if self.load_ema and not self.dit_path:
            raise ValueError(
                "--load_ema picks the EMA weights of --dit_path: pass --dit_path too, or drop --load_ema."
            )

    def hub_kwargs(self) -> dict:
        """What `from_pretrained` takes besides the name: --revision, --variant and --cache_dir, where given."""
        given = {"revision": self.revision, "variant": self.variant, "cache_dir": self.cache_dir}
        return {name: value for name, value in given.items() if value is not None}
