"""The levers whose copies run on a side stream on a GPU: `--block_swap` (the adapter's gradients are those without
the swap, and the blocks' base weights leave the GPU) and `--low_vram`'s offloaded block inputs (the gradients of
full recompute). Skipped on the CPU (`tests/test_fp8.py` and `tests/test_fast_paths.py` check the rest
there); run on the GPU machine with `pytest --noconftest tests/test_lean_levers_gpu.py`."""

import pytest
import torch
from swap_step import lora_step

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="the side stream needs a GPU")


@pytest.mark.parametrize("mode", ["selective", "full"])
def test_block_swap_on_a_side_stream_gives_the_plain_gradients(mode):
    plain, _ = lora_step(False, mode, device="cuda", fp8=False)
    swapped, swap = lora_step(True, mode, device="cuda", fp8=False)
    for name in plain:  # the same kernels in the same order; fp32 tolerance in case one is non-deterministic
        torch.testing.assert_close(swapped[name], plain[name], msg=name)
    for i, block in enumerate(swap.blocks):
        devices = {t.device.type for t in swap.frozen[i]}
        assert devices == ({"cuda"} if i in swap.resident else {"cpu"}), (i, devices)
        assert all(h.is_pinned() for h in swap.host[i])


def test_block_inputs_offloaded_on_a_side_stream_give_the_gradients_of_full_recompute():
    full, _ = lora_step(False, "full", device="cuda", fp8=False)
    offloaded, _ = lora_step(False, "full", offload=True, device="cuda", fp8=False)
    for name in full:
        torch.testing.assert_close(offloaded[name], full[name], msg=name)


def test_the_leanest_step_compiled_gives_the_gradients_of_full_recompute():
    """fp8 base, block swap, offloaded inputs and the blocks' parts checkpointed, with the parts compiled on their
    own by inductor (`compile.compile_blocks`), as `--low_vram` runs 2B at 720p on a 16 GB card; against plain full
    recompute of the same fp8 base, uncompiled. Inductor fuses the norms and rotations, so fp32 rounding differs."""
    full, _ = lora_step(False, "full", device="cuda")
    leanest, _ = lora_step(True, "full", offload=True, device="cuda", parts=True, compile_backend="inductor")
    for name in full:
        torch.testing.assert_close(leanest[name], full[name], rtol=1e-4, atol=1e-6, msg=name)
