"""The step the block-swap tests compare (`tests/test_fp8.py` on the CPU, `tests/test_lean_levers_gpu.py`
on a GPU): a module of its own, since the GPU runs skip `conftest.py` (it needs scikit-video)."""

import torch


def lora_step(
    block_swap: bool,
    mode: str,
    offload: bool = False,
    device: str = "cpu",
    fp8: bool = True,
    parts: bool = False,
    compile_backend: str | None = None,
):
    """Two LoRA steps' forward and backward of the tiny transformer (its base in fp8, or as loaded) on `device`,
    with or without block swap, the blocks' parts checkpointed, and compiled (`compile_backend`); the adapter's
    gradients of the second, and the swap (None without one)."""
    from diffusers.training_utils import cast_training_params

    from cosmos_v2w_diffusers.models.compile import compile_blocks
    from cosmos_v2w_diffusers.models.components import load_transformer
    from cosmos_v2w_diffusers.models.fp8 import quantize_blocks_to_fp8
    from cosmos_v2w_diffusers.models.presets import get_preset
    from cosmos_v2w_diffusers.training.activation_checkpointing import apply_activation_checkpointing, canonical_name
    from cosmos_v2w_diffusers.training.block_swap import BlockSwap
    from cosmos_v2w_diffusers.training.model import apply_lora
    from cosmos_v2w_diffusers.training.objective import draw_training_randomness, video2world_loss

    tiny = get_preset("tiny")
    torch.manual_seed(0)
    transformer = load_transformer(tiny).to(device).train()
    if fp8:
        quantize_blocks_to_fp8(transformer)
    apply_lora(transformer, 4, 4, ["to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2"], seed=0)
    cast_training_params(transformer, torch.float32)  # as the trainer: PEFT made the adapter in the base's fp8
    swap = BlockSwap(transformer.transformer_blocks, torch.device(device)) if block_swap else None
    apply_activation_checkpointing(transformer, mode, None, offload, swap, parts)
    if compile_backend:
        compile_blocks(transformer, backend=compile_backend)
    latents = torch.randn(1, 16, 5, 16, 28).to(device)
    draws = draw_training_randomness(tuple(latents.shape), torch.Generator().manual_seed(1))
    text = torch.randn(1, 512, tiny.text_embed_dim).to(device)
    for _ in range(2):  # a second step: the swap starts over from the first block
        transformer.zero_grad()
        loss = video2world_loss(
            transformer,
            latents,
            draws.noise.to(device),
            draws.sigma.to(device),
            draws.num_cond_frames,
            text,
            draws.drop_text,
        )
        loss.backward()
    grads = {canonical_name(n): p.grad.clone() for n, p in transformer.named_parameters() if p.requires_grad}
    return grads, swap
