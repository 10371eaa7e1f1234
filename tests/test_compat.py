"""`compat.py`: every private API of another library that the package reaches still exists on the installed
versions, and each wrapper refuses a version older than the tested ones by name."""

import importlib
import inspect

import deepspeed
import diffusers
import pytest
import torch

from cosmos_v2w_diffusers import compat


def _resolve(dotted: str):
    """The object at `dotted` (a module path, then attributes), importing the longest module prefix."""
    parts = dotted.split(".")
    for split in range(len(parts), 0, -1):
        try:
            target = importlib.import_module(".".join(parts[:split]))
        except ImportError:
            continue
        for name in parts[split:]:
            target = getattr(target, name)
        return target
    raise ImportError(dotted)


@pytest.mark.parametrize("dotted", [path for paths in compat.PRIVATE_APIS.values() for path in paths])
def test_every_private_api_resolves_on_the_installed_versions(dotted):
    if dotted.startswith("flash_attn."):  # the `flash4` extra: on GPU machines only
        pytest.importorskip("flash_attn.cute.interface")
    owner_path, name = dotted.rsplit(".", 1)
    if owner_path.endswith(".param"):  # an attribute the module sets on the parameters it handles
        assert f"param.{name} =" in inspect.getsource(_resolve(owner_path.removesuffix(".param"))), dotted
        return
    owner = _resolve(owner_path)
    if isinstance(owner, type) and not hasattr(owner, name):  # an attribute each instance sets in __init__
        assert f"self.{name} =" in inspect.getsource(owner), dotted
    else:
        assert hasattr(owner, name), dotted


def test_the_installed_versions_lie_in_the_tested_ranges():
    for installed, tested in (
        (diffusers.__version__, compat.DIFFUSERS_TESTED),
        (torch.__version__, compat.TORCH_TESTED),
        (deepspeed.__version__, compat.DEEPSPEED_TESTED),
    ):
        version = compat.Version(compat.Version(installed).base_version)
        assert tested[0] <= version <= tested[1], (installed, tested)


GUARDED = {  # each wrapper, called with arguments that would do nothing harmful had its guard passed
    "diffusers": [
        lambda: compat.register_cacheable_block(type("Block", (), {})),
        lambda: compat.context_parallel_input(1, 3),
        lambda: compat.context_parallel_output(1, 3),
        lambda: compat.ulysses_parallel_config(2),
        lambda: compat.set_model_parallel_config(torch.nn.Module(), None),
        lambda: compat.cache_context(torch.nn.Module(), "cond").__enter__(),
    ],
    "torch": [
        lambda: compat.set_cuda_allocator_settings("expandable_segments:True"),
        compat.keep_ddp_graphs_whole,
        compat.attention_kernel_ops,
        compat.checkpoint_wrapper_class,
        lambda: compat.checkpoint_wrapper(torch.nn.Linear(1, 1)),
        compat.activate_flash_attention_4,
        compat.require_scaled_fp8_matmul,
    ],
    "deepspeed": [
        lambda: compat.zero_flat_fp32_partitions(object(), stage3=True),
        lambda: compat.zero_link_optimizer_state(object()),
    ],
}


@pytest.mark.parametrize("package,call", [(p, c) for p, calls in GUARDED.items() for c in calls])
def test_each_wrapper_refuses_an_untested_older_version_by_name(monkeypatch, package, call):
    module = {"diffusers": diffusers, "torch": torch, "deepspeed": deepspeed}[package]
    monkeypatch.setattr(module, "__version__", "0.1.0")
    with pytest.raises(ImportError, match=rf"needs {package} >= .*tested .* found 0\.1\.0: `pip install -U"):
        call()


def test_a_newer_untested_version_is_named_once_with_what_to_check(monkeypatch, caplog):
    monkeypatch.setattr(torch, "__version__", "99.0.0")
    monkeypatch.setattr(compat, "_WARNED_NEWER", set())
    with caplog.at_level("WARNING", logger="cosmos_v2w_diffusers.compat"):
        compat.attention_kernel_ops()
        compat.checkpoint_wrapper_class()  # a second torch API: no second warning
    (record,) = caplog.records
    message = record.getMessage()
    assert "torch 99.0.0 is newer than the newest tested" in message and "PRIVATE_APIS['torch']" in message
    assert "tests/test_compat.py" in message and f"torch<={compat.TORCH_TESTED[1]}" in message


def test_the_wrappers_work_on_the_installed_versions():
    ops = compat.attention_kernel_ops()
    assert torch.ops.aten._scaled_dot_product_flash_attention_for_cpu.default in ops
    wrapped = compat.checkpoint_wrapper(torch.nn.Linear(2, 2), preserve_rng_state=False)
    assert isinstance(wrapped, compat.checkpoint_wrapper_class())
    assert f".{next(name for name, _ in wrapped.named_children())}" == compat.CHECKPOINT_WRAPPED_PREFIX
    config = compat.ulysses_parallel_config(2)
    assert config.context_parallel_config.ulysses_degree == 2
    model = diffusers.ModelMixin()
    assert compat.model_parallel_config(model) is None
    compat.set_model_parallel_config(model, config)
    assert compat.model_parallel_config(model) is config
    split = compat.context_parallel_input(split_dim=1, expected_dims=3)
    assert (split.split_dim, split.expected_dims, split.split_output) == (1, 3, False)
