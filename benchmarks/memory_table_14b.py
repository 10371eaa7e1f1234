"""Per-GPU memory of 14B post-training at 93x704x1280 under FSDP x context parallel: computed from the
states each rank holds plus the activations of one CP shard measured by `slice_14b.py`.

- Activations (per rank, one sample): the slices of 1, 2 and 3 real 14B blocks give, for each CP degree
  and checkpointing mode, what each block keeps for the backward (the slope), what the model keeps
  outside its blocks (the intercept: timestep embeddings, patch embedding, output) and one block's
  recompute-and-backward peak on top; 36 blocks are added up from these.
- States (per rank, sharded over all W ranks by FSDP): full post-training keeps fp32 weights, fp32
  gradients, AdamW's two fp32 moments and the fp32 EMA, 20 bytes a parameter; LoRA keeps the frozen base
  in bf16, 2 bytes a parameter (its adapter is negligible). FSDP adds the bf16 blocks it gathers (the one
  running and the one prefetched) and a block's gradient buffer.

    python benchmarks/memory_table_14b.py   # reads results/slice_14b*.json, writes results/memory_table_14b.json
"""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks.common import write_result

RESULTS = Path(__file__).parent / "results"
GIB = 2**30
# (GPUs, the card, its memory in GiB as torch reports it: an H100 80GB has 79.6 GiB, an H200 140.4 GiB)
CLUSTERS = [(8, "80 GB", 79.6), (32, "80 GB", 79.6), (8, "141 GB", 140.4)]
HEADROOM_GIB = 4  # the allocator's slack and the CUDA context


def activation_model() -> dict[tuple[int, str], dict[str, float]]:
    """(cp, mode) -> {per_block, outside_blocks, working} GiB, from the three slice measurements."""
    slices = {json.loads((RESULTS / name).read_text())["blocks"]: json.loads((RESULTS / name).read_text())["rows"]
              for name in ("slice_14b_1block.json", "slice_14b.json", "slice_14b_3blocks.json")}
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
    block_params = params / blocks
    activations = activation_model()
    rows = []
    for gpus, card, capacity in CLUSTERS:
        for arch, bytes_per_param in (("full", 20), ("lora", 2)):
            states = bytes_per_param * params / gpus / GIB
            fsdp_buffers = (2 * 2 + (4 if arch == "full" else 0)) * block_params / GIB
            for cp in (1, 2, 4, 8):
                per_mode = {}
                for mode in ("selective", "full"):
                    a = activations[(cp, mode)]
                    per_mode[mode] = states + fsdp_buffers + a["outside_blocks"] + blocks * a["per_block"] + a["working"]
                fits = [m for m in ("selective", "full") if per_mode[m] + HEADROOM_GIB <= capacity]
                rows.append({
                    "gpus": gpus, "card": card, "gib_per_gpu": capacity, "train_architecture": arch, "cp": cp,
                    "data_parallel": gpus // cp, "states_gib": round(states, 1),
                    "selective_gib": round(per_mode["selective"], 1), "full_recompute_gib": round(per_mode["full"], 1),
                    "fits_with": fits[0] if fits else None,
                })
    write_result("memory_table_14b", {"parameters": params, "headroom_gib": HEADROOM_GIB, "rows": rows})
    print("| GPUs | post-training | CP | states | selective | full recompute | fits with |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['gpus']} x {r['card']} | {r['train_architecture']} | {r['cp']} | {r['states_gib']} | "
              f"{r['selective_gib']} | {r['full_recompute_gib']} | {r['fits_with'] or 'no'} |")


if __name__ == "__main__":
    main()
