"""Per-GPU memory of 14B post-training at 93x704x1280 under FSDP x context parallel: computed from the
states each rank holds plus the activations of one CP shard measured by `slice_14b.py`.

- Activations (per rank, one sample): the slices of 1, 2 and 3 real 14B blocks give, for each CP degree
  and checkpointing mode, what each block keeps for the backward (the slope), what the model keeps
  outside its blocks (the intercept: timestep embeddings, patch embedding, output) and one block's
  recompute-and-backward peak on top; 36 blocks are added up from these.
- States, FSDP's buffers and the headroom left free are the trainer's own memory model
  (`cosmos_v2w_diffusers/training/memory.py`: `state_bytes`, `fsdp_buffer_bytes`, `HEADROOM_BYTES`), counted on
  the 14B transformer built on the meta device, with the LoRA adapter of a LoRA run: full post-training keeps
  fp32 weights, gradients, AdamW's two moments and the fp32 EMA (20 bytes a parameter; FSDP gathers bf16
  weights itself, so autocast makes no copies); LoRA the frozen bf16 base plus the adapter's states. All are
  sharded over the W ranks; FSDP adds two gathered bf16 blocks and a block's fp32 gradient.
- The activations are 14B's own, measured: the planner's per-token constants were measured on 2B and fall
  short for 14B (one uncompiled 14B block's backward needs 125 bytes per token and channel against 2B's 95,
  and 14B keeps 22 more outside its blocks), so its 14B plans would be optimistic.

    python -m benchmarks.memory_table_14b   # reads results/slice_14b*.json, writes $OUT or outputs/benchmarks/
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from benchmarks.common import write_result
from cosmos_v2w_diffusers.models.components import build_transformer
from cosmos_v2w_diffusers.models.presets import get_preset
from cosmos_v2w_diffusers.training.memory import HEADROOM_BYTES, fsdp_buffer_bytes, state_bytes
from cosmos_v2w_diffusers.training.model import apply_lora
from cosmos_v2w_diffusers.training.sections.weights import LORA_TARGET_MODULES

RESULTS = Path(__file__).parent / "results"
LORA_TARGETS = LORA_TARGET_MODULES.split(",")
GIB = 2**30
# (GPUs, the card, its memory in GiB as torch reports it: an H100 80GB has 79.6 GiB, an H200 140.4 GiB)
CLUSTERS = [(8, "80 GB", 79.6), (32, "80 GB", 79.6), (8, "141 GB", 140.4)]
HEADROOM_GIB = HEADROOM_BYTES / GIB


def transformer_14b(train_architecture: str) -> torch.nn.Module:
    """The 14B transformer as a run of `train_architecture` holds it, on the meta device: fp32 for full runs, a
    bf16 base with an fp32 LoRA adapter (rank 32, the 14B preset's) for LoRA runs."""
    preset = get_preset("14B")
    transformer = build_transformer(preset, device="meta")
    if train_architecture == "lora":
        transformer.to(torch.bfloat16)
        apply_lora(transformer, preset.lora_rank, preset.lora_alpha, LORA_TARGETS, seed=0)
        for p in transformer.parameters():
            if p.requires_grad:
                p.data = p.data.float()
    return transformer


def activation_model() -> dict[tuple[int, str], dict[str, float]]:
    """(cp, mode) -> {per_block, outside_blocks, working} GiB, from the three slice measurements."""
    slices = {
        json.loads((RESULTS / name).read_text())["blocks"]: json.loads((RESULTS / name).read_text())["rows"]
        for name in ("slice_14b_1block.json", "slice_14b.json", "slice_14b_3blocks.json")
    }
    model = {}
    for i, row in enumerate(slices[1]):
        kept = {blocks: slices[blocks][i]["kept_gib"] for blocks in slices}
        peak = {blocks: slices[blocks][i]["backward_peak_gib"] for blocks in slices}
        per_block = (kept[3] - kept[1]) / 2
        model[(row["cp"], row["mode"])] = {
            "per_block": per_block,
            "outside_blocks": kept[1] - per_block,
            "working": max(peak[b] - kept[b] for b in slices),
        }
    return model


def main() -> None:
    first = json.loads((RESULTS / "slice_14b.json").read_text())
    params, blocks = first["parameters_14b"], first["num_blocks_14b"]
    activations = activation_model()
    models = {arch: transformer_14b(arch) for arch in ("full", "lora")}
    rows = []
    for gpus, card, capacity in CLUSTERS:
        for arch, transformer in models.items():
            states = sum(state_bytes(transformer, torch.bfloat16, ema=True, fsdp_shards=gpus).values()) / GIB
            fsdp_buffers = fsdp_buffer_bytes(transformer) / GIB
            for cp in (1, 2, 4, 8):
                per_mode = {}
                for mode in ("selective", "full"):
                    a = activations[(cp, mode)]
                    per_mode[mode] = (
                        states + fsdp_buffers + a["outside_blocks"] + blocks * a["per_block"] + a["working"]
                    )
                fits = [m for m in ("selective", "full") if per_mode[m] + HEADROOM_GIB <= capacity]
                rows.append(
                    {
                        "gpus": gpus,
                        "card": card,
                        "gib_per_gpu": capacity,
                        "train_architecture": arch,
                        "cp": cp,
                        "data_parallel": gpus // cp,
                        "states_gib": round(states, 1),
                        "selective_gib": round(per_mode["selective"], 1),
                        "full_recompute_gib": round(per_mode["full"], 1),
                        "fits_with": fits[0] if fits else None,
                    }
                )
    write_result("memory_table_14b", {"parameters": params, "headroom_gib": HEADROOM_GIB, "rows": rows})
    print("| GPUs | post-training | CP | states | selective | full recompute | fits with |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['gpus']} x {r['card']} | {r['train_architecture']} | {r['cp']} | {r['states_gib']} | "
            f"{r['selective_gib']} | {r['full_recompute_gib']} | {r['fits_with'] or 'no'} |"
        )


if __name__ == "__main__":
    main()
