"""Rows of the README's 14B table checked on one GPU: a slice of 3 real 14B blocks runs at the row's per-rank
sequence length, with everything else the row holds (the sharded states, FSDP's gathered blocks, the other 33
blocks' kept activations) allocated first as one buffer. The peak, less the slice's own bf16 weights, is the
row measured, allocator included; it is compared with the computed row and with the card.

    python benchmarks/check_row_14b.py --rows 8:full:4:selective 8:lora:2:full
"""

from __future__ import annotations

import argparse
import dataclasses
import json

import torch

from benchmarks.common import write_result
from benchmarks.memory_table_14b import (
    CLUSTERS,
    HEADROOM_GIB,
    RESULTS,
    activation_model,
)
from benchmarks.slice_14b import GIB, measure
from cosmos_v2w_diffusers.models.components import build_transformer
from cosmos_v2w_diffusers.models.presets import get_preset

SLICE_BLOCKS = 3
CAPACITY_80GB = next(capacity for _, card, capacity in CLUSTERS if card == "80 GB")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", nargs="+", required=True, help="GPUS:ARCH:CP:MODE, e.g. 8:full:4:selective")
    parser.add_argument("--name", default="check_rows_14b")
    args = parser.parse_args()
    table = json.loads((RESULTS / "memory_table_14b.json").read_text())["rows"]
    activations = activation_model()
    preset = get_preset("14B")
    sliced = dataclasses.replace(preset, transformer_config={**preset.transformer_config, "num_layers": SLICE_BLOCKS})
    transformer = build_transformer(sliced, device="cuda").to(torch.bfloat16).train()
    slice_weights = sum(p.numel() * p.element_size() for p in transformer.parameters())
    checks = []
    for spec in args.rows:
        gpus, arch, cp, mode = spec.split(":")
        row = next(
            r
            for r in table
            if r["gpus"] == int(gpus)
            and r["card"] == "80 GB"
            and r["train_architecture"] == arch
            and r["cp"] == int(cp)
        )
        computed = row["selective_gib" if mode == "selective" else "full_recompute_gib"]
        a = activations[(int(cp), mode)]
        slice_own = SLICE_BLOCKS * a["per_block"] + a["outside_blocks"] + a["working"]
        rest = torch.empty(int((computed - slice_own) * GIB), dtype=torch.uint8, device="cuda")
        measured = measure(transformer, int(cp), mode)
        peak = (torch.cuda.max_memory_allocated() - slice_weights) / GIB
        checks.append(
            {
                "row": spec,
                "computed_gib": computed,
                "allocated_for_the_rest_gib": round(rest.numel() / GIB, 2),
                "measured_gib": round(peak, 2),
                "reserved_peak_gib": round(torch.cuda.max_memory_reserved() / GIB, 2),
                "fits_80gb_card": peak + HEADROOM_GIB <= CAPACITY_80GB,
                "slice": measured,
            }
        )
        print(checks[-1], flush=True)
        del rest
        torch.cuda.empty_cache()
    write_result(
        args.name, {"slice_blocks": SLICE_BLOCKS, "slice_weights_gib": round(slice_weights / GIB, 2), "checks": checks}
    )


if __name__ == "__main__":
    main()
