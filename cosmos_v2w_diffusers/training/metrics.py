"""Throughput figures a run prints at its end: s/step, clips/s, model TFLOP/s and peak GPU memory.

Model FLOPs follow the MFU convention: a training step is 3 forwards, whatever is recomputed.
"""

from __future__ import annotations

import math
import statistics

import torch

TEXT_TOKENS = 512


def forward_flops(transformer_config, tokens: int, text_tokens: int = TEXT_TOKENS) -> float:
    """Matmul and attention FLOPs of one transformer forward over `tokens` video tokens.

    Per block: q/k/v/out and the 4x MLP (`28 d^2` per token, counting a multiply-add as 2), self-attention
    (`4 s^2 d`), cross-attention to the text (`4 s t d`) and the text's key/value projections (`4 t k d`
    with k = 1024 the T5 width). 2B at 84,480 tokens: 1.925e15.
    """
    d = transformer_config["num_attention_heads"] * transformer_config["attention_head_dim"]
    layers = transformer_config["num_layers"]
    text_dim = transformer_config["text_embed_dim"]
    return layers * (
        28 * d**2 * tokens + 4 * tokens**2 * d + 4 * tokens * text_tokens * d + 4 * text_tokens * text_dim * d
    )


def throughput_summary(
    step_seconds: list[float],
    clips_per_step: int,
    num_processes: int,
    transformer_config,
    tokens: int,
    device: torch.device,
) -> dict[str, float]:
    """Median s/step (the first step, which compiles, left out when there are others) and what follows from it."""
    timed = step_seconds[1:] if len(step_seconds) > 1 else step_seconds
    median = statistics.median(timed)
    summary = {
        "s_per_step": median,
        "clips_per_s": clips_per_step / median,
        "model_tflops_per_s_per_device": (
            3 * forward_flops(transformer_config, tokens) * clips_per_step / num_processes / median / 1e12
        ),
    }
    if device.type == "cuda":
        summary["peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    return summary


def describe_throughput(summary: dict[str, float]) -> str:
    memory = f", peak GPU memory {summary['peak_memory_gib']:.1f} GiB" if "peak_memory_gib" in summary else ""
    return (
        f"Throughput: {summary['s_per_step']:.2f} s/step, {summary['clips_per_s']:.3f} clips/s, "
        f"{summary['model_tflops_per_s_per_device']:.3g} model TFLOP/s per device (3x forward){memory}"
    )


def loss_trend(losses: list[float]) -> str | None:
    """The mean loss of the first and last tenth of a run's finite losses (None for fewer than 10 steps)."""
    finite = [x for x in losses if math.isfinite(x)]
    if len(finite) < 10:
        return None
    window = max(5, len(finite) // 10)
    first, last = statistics.fmean(finite[:window]), statistics.fmean(finite[-window:])
    return f"Mean loss of the first {window} steps {first:.4f} -> of the last {window} steps {last:.4f}"
