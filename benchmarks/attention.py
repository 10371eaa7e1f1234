"""Attention kernels at the 2B model's 720p self-attention shape (1 x 16 heads x 84,480 tokens x 128, bf16):
seconds and TFLOP/s forward and forward+backward, and each kernel's largest difference from cuDNN's output
and gradients. FLOPs: 4 S^2 D per head forward; forward+backward counted as 3.5x forward.

    python benchmarks/attention.py            # cudnn, flash (torch's FA2), and flash4 when installed
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from benchmarks.common import median_seconds, write_result
from cosmos_v2w_diffusers.compat import activate_flash_attention_4
from cosmos_v2w_diffusers.models.attention import flash4_available


def measure(backend: SDPBackend, q, k, v, grad, repeats: int) -> dict:
    def forward():
        with sdpa_kernel(backend):
            return F.scaled_dot_product_attention(q, k, v)

    def forward_backward():
        out = forward()
        return out, torch.autograd.grad(out, (q, k, v), grad)

    flops = 4 * q.shape[0] * q.shape[1] * q.shape[2] * k.shape[2] * q.shape[3]
    # The warm-up call also JIT-compiles FlashAttention-4.
    fwd, fwd_bwd = median_seconds(forward, repeats), median_seconds(forward_backward, repeats)
    out, grads = forward_backward()
    return {
        "forward_s": round(fwd, 4),
        "forward_tflops": round(flops / fwd / 1e12, 1),
        "forward_backward_s": round(fwd_bwd, 4),
        "forward_backward_tflops": round(3.5 * flops / fwd_bwd / 1e12, 1),
        "outputs": (out.detach(), [g.detach() for g in grads]),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", type=int, default=84480)
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--name", default="attention_84480")
    args = parser.parse_args()
    gen = torch.Generator("cuda").manual_seed(0)
    q, k, v, grad = (
        torch.randn(1, args.heads, args.tokens, 128, device="cuda", dtype=torch.bfloat16, generator=gen)
        for _ in range(4)
    )
    for t in (q, k, v):
        t.requires_grad_(True)
    kernels = {"cudnn": SDPBackend.CUDNN_ATTENTION, "flash2": SDPBackend.FLASH_ATTENTION}
    results = {name: measure(backend, q, k, v, grad, args.repeats) for name, backend in kernels.items()}
    if flash4_available(q.device):
        activate_flash_attention_4()  # torch's flash SDPA now runs FlashAttention-4
        results["flash4"] = measure(SDPBackend.FLASH_ATTENTION, q, k, v, grad, args.repeats)
    else:
        results["flash4"] = {"error": "flash_attn.cute (flash-attn-4) is not installed or this GPU is not sm90/sm100"}
    ref_out, ref_grads = results["cudnn"]["outputs"]
    for name, r in results.items():
        if "outputs" not in r:
            continue
        out, grads = r.pop("outputs")
        r["max_abs_diff_vs_cudnn"] = {
            "out": float((out - ref_out).abs().max()),
            **{f"grad_{n}": float((g - rg).abs().max()) for n, g, rg in zip("qkv", grads, ref_grads)},
        }
        print(name, r, flush=True)
    write_result(args.name, {"shape": [1, args.heads, args.tokens, 128], "dtype": "bfloat16", "kernels": results})


if __name__ == "__main__":
    main()
