"""`--base_precision fp8`: a LoRA run's frozen base stored in fp8 (issue 22, lever 1), on the tiny model."""

import numpy as np
import pytest
import torch
from conftest import tiny_config
from swap_step import lora_step

from cosmos_v2w_diffusers.models.fp8 import Float8FrozenLinear
from cosmos_v2w_diffusers.training.config import TrainConfig
from cosmos_v2w_diffusers.training.run_config import resolve
from cosmos_v2w_diffusers.training.trainer import Trainer


def test_an_fp8_linear_computes_the_linear_within_fp8_rounding_and_saves_like_one():
    torch.manual_seed(0)
    linear = torch.nn.Linear(64, 32).to(torch.bfloat16)
    quantized = Float8FrozenLinear(linear)
    x = torch.randn(5, 64, dtype=torch.bfloat16)
    expected, got = linear(x).float(), quantized(x).float()
    # e4m3 keeps 3 mantissa bits: each weight within 1/16 of itself, the sums well within that
    assert (got - expected).norm() / expected.norm() < 0.04
    assert quantized.weight.dtype == torch.float8_e4m3fn and quantized.weight.element_size() == 1
    saved = quantized.state_dict()
    assert set(saved) == {"weight", "bias"} and saved["weight"].dtype == torch.bfloat16
    assert (saved["weight"].float() - linear.weight.float()).abs().max() <= linear.weight.float().abs().max() / 16


@pytest.mark.slow  # 47 s on 2 cores; `make test` keeps the fp8 layer's own test above
def test_lora_on_an_fp8_base_trains_like_the_full_precision_base(bikes_dataset, tmp_path):
    """The same 40 draws on both bases. Measured on the CPU (fp32 base): per-step losses 0.44% apart on average,
    1.7% at most; the base's blocks take a quarter of the bytes. The validation copy gets only the adapter."""
    losses, base_bytes = {}, {}
    for precision in ("bf16", "fp8"):
        extra = (
            dict(validation_prompt="A video of sks teal robot.", validation_num_inference_steps=2)
            if precision == "fp8"
            else {}
        )
        trainer = Trainer(
            tiny_config(
                bikes_dataset,
                tmp_path / precision,
                train_architecture="lora",
                base_precision=precision,
                max_iter=40,
                save_iter=40,
                **extra,
            )
        )
        losses[precision] = np.array(trainer.train())
        base_bytes[precision] = sum(
            p.numel() * p.element_size() for p in trainer.transformer.parameters() if not p.requires_grad
        )
    relative = np.abs(losses["fp8"] - losses["bf16"]) / np.abs(losses["bf16"])
    assert relative.mean() < 0.02 and relative.max() < 0.05, relative
    assert base_bytes["fp8"] < 0.4 * base_bytes["bf16"]
    assert (tmp_path / "fp8" / "validation" / "step_000000040.mp4").is_file()
    assert (tmp_path / "fp8" / "lora" / "pytorch_lora_weights.safetensors").is_file()


def test_an_fp8_base_is_for_lora_runs():
    with pytest.raises(ValueError, match="for --train_architecture lora"):
        resolve(TrainConfig.from_flags(model="tiny", base_precision="fp8"))


def test_a_run_that_cannot_fit_its_memory_budget_is_refused_before_any_weight_loads(
    prepared_dataset, tmp_path, monkeypatch
):
    """`--memory_budget_gib`: the leanest step of the run (counted on a meta-device model) against the budget."""
    from cosmos_v2w_diffusers.models.components import build_transformer
    from cosmos_v2w_diffusers.models.presets import get_preset
    from cosmos_v2w_diffusers.training import memory, model
    from cosmos_v2w_diffusers.training.model import meta_trainable_transformer

    def no_model_loading(*args, **kwargs):
        raise AssertionError("a model was loaded before the budget was checked")

    monkeypatch.setattr(model, "load_transformer", no_model_loading)
    with pytest.raises(ValueError, match="needs at least .* GiB of GPU memory at its leanest .* has 0.5 GiB"):
        Trainer(tiny_config(prepared_dataset, tmp_path / "run", memory_budget_gib=0.5))
    monkeypatch.undo()
    # 2B at 93x704x1280 on a 24 GB card: full post-training cannot fit; LoRA on an fp8 base with --low_vram can.
    two = get_preset("2B")
    budget = 24 * 2**30
    full = resolve(TrainConfig.from_flags(model="2B"))
    none = memory.LeanLevers()
    with pytest.raises(ValueError, match="--train_architecture lora"):
        memory.check_fits(
            meta_trainable_transformer(two, full.weights, full.seed, torch.bfloat16),
            full.parallel,
            84_480,
            torch.bfloat16,
            budget,
            none,
        )
    lean = resolve(TrainConfig.from_flags(model="2B", train_architecture="lora", base_precision="fp8", low_vram=True))
    least = memory.check_fits(
        meta_trainable_transformer(two, lean.weights, lean.seed, torch.bfloat16),
        lean.parallel,
        84_480,
        torch.bfloat16,
        budget,
        none,
    )
    bf16_lora = resolve(TrainConfig.from_flags(model="2B", train_architecture="lora", low_vram=True))
    more = memory.leanest_step_bytes(
        meta_trainable_transformer(two, bf16_lora.weights, bf16_lora.seed, torch.bfloat16),
        bf16_lora.parallel,
        84_480,
        torch.bfloat16,
        none,
    )
    blocks = build_transformer(two, device="meta").transformer_blocks
    block_weights = sum(p.numel() for p in blocks.parameters())
    assert more - least == pytest.approx(block_weights, rel=0.02)  # fp8 saves a byte per block weight


@pytest.mark.parametrize("mode, offload", [("selective", False), ("full", False), ("full", True)])
def test_block_swap_gives_the_plain_gradients_with_two_blocks_on_the_device(mode, offload, monkeypatch):
    """Lever 2 on the CPU (the copies plain, no stream): the adapter's gradients are exactly those without the swap;
    the blocks compute in forward then reverse order, at most two hold device copies at once, no block's base
    layer runs its backward after the block was dropped, and the blocks not on the device point at their host
    tensors."""
    from cosmos_v2w_diffusers.training.block_swap import BlockSwap

    events, most_resident = [], []
    real_enter, real_drop, real_init = BlockSwap.enter, BlockSwap._drop, BlockSwap.__init__

    def init(self, blocks, device):
        real_init(self, blocks, device)
        for i, block in enumerate(self.blocks):
            for module in block.modules():
                if isinstance(module, torch.nn.Linear) and not module.weight.requires_grad:  # a base layer
                    module.register_full_backward_hook(lambda *args, i=i: events.append(("used", i)))

    def enter(self, block):
        real_enter(self, block)
        events.append(("enter", self.index[id(block)]))
        most_resident.append(len(self.resident))

    def drop(self, i):
        real_drop(self, i)
        events.append(("drop", i))

    monkeypatch.setattr(BlockSwap, "__init__", init)
    monkeypatch.setattr(BlockSwap, "enter", enter)
    monkeypatch.setattr(BlockSwap, "_drop", drop)
    plain, _ = lora_step(False, mode, offload)
    swapped, swap = lora_step(True, mode, offload)
    assert plain.keys() == swapped.keys() and len(plain) > 0
    for name in plain:
        torch.testing.assert_close(swapped[name], plain[name], rtol=0, atol=0, msg=name)
    n = len(swap.blocks)
    one_step = list(range(n)) + list(reversed(range(n)))
    assert [i for what, i in events if what == "enter"] == one_step + one_step and max(most_resident) == 2
    on_device = set()
    for what, i in events:
        if what == "used":
            assert i in on_device, f"block {i}'s base layer ran its backward after the block was dropped"
        on_device = on_device | {i} if what == "enter" else on_device - {i} if what == "drop" else on_device
    assert any(what == "used" for what, _ in events) and any(what == "drop" for what, _ in events)
    for i, block in enumerate(swap.blocks):
        on_host = [t.data_ptr() for t in swap.frozen[i]] == [h.data_ptr() for h in swap.host[i]]
        assert on_host == (i not in swap.resident), i


def test_block_swap_is_for_lora_runs_that_recompute_on_one_gpu():
    with pytest.raises(ValueError, match="--block_swap streams a frozen base: it is for --train_architecture lora"):
        resolve(TrainConfig.from_flags(model="tiny", block_swap=True))
    with pytest.raises(ValueError, match="drop --activation_checkpointing none"):
        resolve(
            TrainConfig.from_flags(
                model="tiny", train_architecture="lora", block_swap=True, activation_checkpointing="none"
            )
        )


def test_a_lora_run_with_block_swap_trains_as_without(bikes_dataset, tmp_path):
    """The trainer's wiring: the same losses to the last bit on the CPU."""
    losses = {}
    for swap in (False, True):
        config = tiny_config(
            bikes_dataset, tmp_path / str(swap), train_architecture="lora", block_swap=swap, max_iter=3, save_iter=3
        )
        losses[swap] = Trainer(config).train()
    assert losses[True] == losses[False]


def test_the_lean_levers_are_chosen_cheapest_first_where_the_step_fits_only_with_them():
    """14B LoRA (rank 32, bf16 base) at 720p with --low_vram: its leanest step needs about 73 GiB with the base on
    the GPU and 48 GiB with two blocks there, the difference being the swapped weights, and 12.1 GiB less with the
    blocks' parts checkpointed. Block swap comes first; the parts only where swapping is not enough; neither on
    80 GiB, nor without --low_vram or a budget. Block swap never under several processes or for a full run; the
    parts need --low_vram."""
    from cosmos_v2w_diffusers.models.presets import get_preset
    from cosmos_v2w_diffusers.training import memory
    from cosmos_v2w_diffusers.training.memory import LeanLevers
    from cosmos_v2w_diffusers.training.model import meta_trainable_transformer

    fourteen = get_preset("14B")
    lora = resolve(TrainConfig.from_flags(model="14B", train_architecture="lora", low_vram=True))
    meta = meta_trainable_transformer(fourteen, lora.weights, lora.seed, torch.bfloat16)

    def least(**levers):
        return memory.leanest_step_bytes(meta, lora.parallel, 84_480, torch.bfloat16, LeanLevers(**levers)) / 2**30

    assert (least() - least(block_swap=True)) * 2**30 == pytest.approx(memory.swapped_weight_bytes(meta))
    parts_saving = least(block_swap=True) - least(block_swap=True, checkpoint_parts=True)
    assert parts_saving == pytest.approx(84_480 * 5120 * 30 / 2**30, rel=1e-6)  # 106 -> 76 bytes
    swap_fits = (least(block_swap=True) + least()) / 2
    parts_fit = least(block_swap=True) - parts_saving / 2

    def chosen(config, budget_gib, one_gpu=True):
        budget = int(budget_gib * 2**30)
        lora_run = config.train_architecture == "lora"
        return memory.choose_lean_levers(meta, config.parallel, 84_480, torch.bfloat16, budget, one_gpu, lora_run)

    assert chosen(lora, swap_fits) == LeanLevers(block_swap=True)
    assert chosen(lora, parts_fit) == LeanLevers(block_swap=True, checkpoint_parts=True)
    asked = LeanLevers.asked_by(
        resolve(TrainConfig.from_flags(model="14B", block_swap=True, train_architecture="lora")).parallel
    )
    assert chosen(lora, parts_fit).beyond(asked) == ["checkpoint_parts"]  # what the trainer logs as chosen
    assert chosen(lora, 80) == LeanLevers()
    assert chosen(lora, swap_fits, one_gpu=False) == LeanLevers(checkpoint_parts=True)
    plain = resolve(TrainConfig.from_flags(model="14B", train_architecture="lora"))
    assert chosen(plain, swap_fits) == LeanLevers()  # nothing asked it to fit: refused with the levers instead
    budgeted = resolve(TrainConfig.from_flags(model="14B", train_architecture="lora", memory_budget_gib=40))
    assert chosen(budgeted, parts_fit) == LeanLevers(block_swap=True)  # the parts need --low_vram
    assert not chosen(resolve(TrainConfig.from_flags(model="14B", low_vram=True)), swap_fits).block_swap
    budget = int(parts_fit * 2**30)
    assert memory.check_fits(meta, lora.parallel, 84_480, torch.bfloat16, budget, chosen(lora, parts_fit)) < budget
