"""The architecture docs/architecture.md draws, checked: layers that import only downward, no import cycle."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "cosmos_v2w_diffusers"


def _imported_modules(source: str) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom):  # `from . import training` imports `.training`
            module = "." * node.level + (node.module or "")
            names.add(module)
            names.update(f"{module.rstrip('.')}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return names


# The layers, lowest first (docs/architecture.md): a module may import its own layer and those below it. The top
# level's `compat.py` and `choices.py` sit with `utils/`; its tool shims (`python -m cosmos_v2w_diffusers.<tool>`)
# with `cli/`.
LAYERS = ["utils", "models", "parallel", "data", "generation", "export", "training", "cli"]
TOOL_SHIMS = {"prepare_data", "convert", "demo", "tiny_model", "launch"}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _import_graph() -> dict[str, set[str]]:
    """Each package module -> the package modules it imports, anywhere in it (function-level and TYPE_CHECKING
    imports included: a cycle through them is still a cycle a reader has to untangle)."""
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        found = set()
        for module in _imported_modules(path.read_text()):
            if module.startswith("."):
                dots = len(module) - len(module.lstrip("."))
                base = package.split(".")[: len(package.split(".")) - (dots - 1)]
                module = ".".join(base + ([module.lstrip(".")] if module.lstrip(".") else []))
            found |= {module} & modules.keys()
        graph[name] = found - {name}
    return graph


def _layer(module: str) -> int:
    top = (module.split(".") + [""])[1]
    if top in LAYERS:
        return LAYERS.index(top)
    return len(LAYERS) - 1 if top in TOOL_SHIMS else 0


def test_each_layer_imports_only_itself_and_the_layers_below():
    graph = _import_graph()
    assert len(graph) > 60 and {_layer(m) for m in graph} == set(range(len(LAYERS)))
    upward = {(m, d) for m, deps in graph.items() for d in deps if _layer(d) > _layer(m)}
    assert not upward, sorted(upward)
    # the check sees what it must: a generation module importing training would be caught
    assert _layer("cosmos_v2w_diffusers.training.trainer") > _layer("cosmos_v2w_diffusers.generation.pipeline")
    assert ".training" in _imported_modules("from . import training")  # the form that once slipped through
    top = {p.stem for p in PACKAGE.glob("*.py")} - {"__init__"}
    assert top == {"compat", "choices"} | TOOL_SHIMS, top  # the tree shows the layers


def test_no_module_is_over_400_lines():
    """A module a reader takes in at one sitting: one concept each (the layers' docs name them)."""
    lines = {_module_name(p): len(p.read_text().splitlines()) for p in PACKAGE.rglob("*.py")}
    assert {m: n for m, n in lines.items() if n > 400} == {}
    assert max(lines.values()) > 300  # the count sees the package's modules


def _runtime_imports(source: str) -> set[str]:
    """The top-level package names a module imports when it runs (not those under `if TYPE_CHECKING:`)."""
    tree = ast.parse(source)
    typing_only = {
        id(node)
        for branch in ast.walk(tree)
        if isinstance(branch, ast.If) and getattr(branch.test, "id", None) == "TYPE_CHECKING"
        for statement in branch.body
        for node in ast.walk(statement)
    }
    names = set()
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_argparse_is_imported_by_the_cli_layer_alone():
    """Every command line is parsed in `cli/` (the top-level shims run its mains); the library takes parsed
    flags (a `TrainConfig`, a `GenerationConfig`)."""
    parsing = sorted(
        _module_name(path)
        for path in PACKAGE.rglob("*.py")
        if "argparse" in _runtime_imports(path.read_text()) and path.parent.name != "cli"
    )
    assert parsing == [], parsing
    assert "argparse" in _runtime_imports("import argparse") and "argparse" not in _runtime_imports(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from argparse import Namespace\n"
    )


def test_no_import_cycle_anywhere_in_the_package():
    graph = _import_graph()

    def reaches(start: str, goal: str) -> bool:
        seen, todo = set(), [start]
        while todo:
            module = todo.pop()
            if module == goal:
                return True
            if module not in seen:
                seen.add(module)
                todo.extend(graph[module])
        return False

    cycles = sorted((m, d) for m, deps in graph.items() for d in deps if reaches(d, m))
    assert not cycles, cycles


def test_every_cli_answers_help_and_flag_refusals_without_importing_torch_diffusers_or_transformers():
    """`--help`, and generation refusals that need no model (a chunk count, a missing prompt, the guardrail), answer
    before the heavy imports: in a fraction of a second, not the 6-18 s torch and diffusers take to import."""
    import subprocess
    import sys

    heavy = "print(sorted(m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules))"
    infer = "runpy.run_path('infer_video2world.py', run_name='__main__')"
    runs = [
        ("infer_video2world.py", ["--help"], infer, "--help"),
        ("convert", ["--help"], "runpy.run_module('cosmos_v2w_diffusers.convert', run_name='__main__')", "--help"),
        ("infer_video2world.py", ["--num_chunks", "0"], infer, "missing"),
        (
            "infer_video2world.py",
            ["--prompt", "p", "--input_path", "a.png", "--save_path", "o.mp4", "--num_chunks", "1e9"],
            infer,
            "--num_chunks must be 1 to 100",
        ),
        (
            "infer_video2world.py",
            ["--prompt", "p", "--input_path", "a.png", "--save_path", "o.mp4", "--num_chunks", "2"]
            + ["--num_conditional_frames", "5", "--disable_guardrail"],
            infer,
            "a.png is an image",
        ),
    ]
    for name, argv, run, expected in runs:
        probe = (
            f"import runpy, sys\nsys.argv = {[name, *argv]!r}\ntry:\n    {run}\nexcept SystemExit as exc:\n"
            f"    print(exc.code)\n{heavy}"
        )
        result = subprocess.run(
            [sys.executable, "-c", probe], cwd=PACKAGE.parent, capture_output=True, text=True, timeout=60
        )
        assert expected in result.stdout + result.stderr and result.stdout.strip().endswith("[]"), (
            name,
            argv,
            result.stdout[-500:],
            result.stderr[-500:],
        )


def test_parallel_dims_describe_the_layout_once():
    from types import SimpleNamespace

    import pytest
    from accelerate.utils import DistributedType

    from cosmos_v2w_diffusers.parallel.parallel_dims import ParallelDims

    def accelerator(kind, world, rank):
        return SimpleNamespace(
            distributed_type=kind,
            num_processes=world,
            process_index=rank,
            state=SimpleNamespace(deepspeed_plugin=SimpleNamespace(zero_stage=3)),
        )

    dims = ParallelDims.from_accelerator(accelerator(DistributedType.FSDP, 8, 5), context_parallel_size=2)
    assert (dims.engine, dims.dp_size, dims.dp_rank, dims.state_shards) == ("fsdp", 4, 2, 8)
    assert dims.clips_per_step(batch_size=1, gradient_accumulation_steps=2) == 8
    ddp = ParallelDims.from_accelerator(accelerator(DistributedType.MULTI_GPU, 4, 3))
    assert (ddp.engine, ddp.dp_size, ddp.dp_rank, ddp.state_shards) == ("ddp", 4, 3, None)
    zero = ParallelDims.from_accelerator(accelerator(DistributedType.DEEPSPEED, 2, 0))
    assert (zero.engine, zero.zero_stage) == ("deepspeed", 3)
    assert ParallelDims.from_accelerator(accelerator(DistributedType.DEEPSPEED, 2, 0), 2).cp == 2  # validate refuses
    assert ParallelDims.from_accelerator(accelerator(DistributedType.NO, 1, 0)).engine == "single"
    fsdp1 = accelerator(DistributedType.FSDP, 2, 0)
    fsdp1.state.fsdp_plugin = SimpleNamespace(fsdp_version=1)
    with pytest.raises(ValueError, match="fsdp_version: 2"):
        ParallelDims.from_accelerator(fsdp1)
    with pytest.raises(ValueError, match="must be at least 1"):
        ParallelDims.from_accelerator(accelerator(DistributedType.FSDP, 6, 0), context_parallel_size=0)


def test_generation_takes_its_rank_layout_from_parallel_dims():
    """Context parallelism and guidance parallelism in generation use the training layout (consecutive ranks
    share tokens), so rank i and rank i + cp hold the same tokens and pair up for the two guidance sides."""
    import pytest

    from cosmos_v2w_diffusers.parallel.parallel_dims import ParallelDims

    split = ParallelDims.for_generation(8, 5, guidance_parallel=True)
    assert (split.cp, split.cp_rank, split.dp_rank, split.dp_size) == (4, 1, 1, 2)
    assert split.guidance_pairs() == [(0, 4), (1, 5), (2, 6), (3, 7)]
    whole = ParallelDims.for_generation(4, 3)
    assert (whole.cp, whole.cp_rank, whole.guidance_pairs()) == (4, 3, [])
    with pytest.raises(ValueError, match="even number of processes"):
        ParallelDims.for_generation(3, 0, guidance_parallel=True)
    with pytest.raises(ValueError, match="no guidance parallelism"):
        whole.guidance_group()
    with pytest.raises(ValueError, match="is not one of the 2 processes"):
        ParallelDims.for_generation(2, 2)
    # Nothing else in the package works out which ranks share tokens or pair up.
    for path in PACKAGE.rglob("*.py"):
        if path.name != "parallel_dims.py":
            text = path.read_text()
            assert "init_device_mesh" not in text and "new_group" not in text, path


def _code_lines(source: str) -> dict[int, str]:
    """`source`'s lines with their strings and comments left out (docstrings may name private APIs)."""
    import io
    import tokenize

    lines: dict[int, str] = {}
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type not in (tokenize.STRING, tokenize.COMMENT):
            lines[token.start[0]] = lines.get(token.start[0], "") + token.string
    return lines


def test_only_compat_names_another_librarys_private_api():
    """A private module, function or attribute of torch, diffusers, DeepSpeed, flash-attn or accelerate is reached
    through `compat.py` alone, so an upgrade that moves one breaks one module, with a tested message."""
    import re

    private = re.compile(
        r"\b(?:torch|diffusers|deepspeed|flash_attn|accelerate)(?:\.\w+)*\._[a-z]\w*"  # torch._dynamo, x._fa4
        r"|\b(?:transformer|model)\._parallel_config"  # diffusers' ModelMixin's
        r"|\._(?:lazy_init_hp\w*|set_allocator\w*)\b"
        r"|\b(?:single_partition_of_fp32_groups|fp32_partitioned_groups_flat)\b"  # DeepSpeed's optimizer's
    )
    assert all(private.search(line) for line in ("torch._dynamo.config.x = 0", "transformer._parallel_config = c"))
    found = {
        f"{path.relative_to(PACKAGE)}:{n}": line
        for path in PACKAGE.rglob("*.py")
        if path.name != "compat.py"
        for n, line in _code_lines(path.read_text()).items()
        if private.search(line)
    }
    assert not found, found


# Where the whole run is the subject: the flags, their checks and resolution, the trainer and its setup's
# builders, the command lines.
WHOLE_RUN_MODULES = {
    "training.config",
    "training.run_config",
    "training.setup",
    "training.trainer",
}


def _signatures():
    """(dotted name, parameter name, annotation source) of every function and method in the package."""
    for path in PACKAGE.rglob("*.py"):
        module = _module_name(path).removeprefix("cosmos_v2w_diffusers.")
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef):
                functions = [(f"{node.name}.{f.name}", f) for f in node.body if isinstance(f, ast.FunctionDef)]
            elif isinstance(node, ast.Module):
                functions = [(f.name, f) for f in node.body if isinstance(f, ast.FunctionDef)]
            else:
                continue
            for name, function in functions:
                for arg in function.args.args + function.args.kwonlyargs:
                    annotation = ast.unparse(arg.annotation) if arg.annotation is not None else None
                    yield module, f"{module}.{name}", arg.arg, annotation


def test_components_take_the_config_sections_they_read_not_the_whole_run():
    """Outside the trainer, the flags' own modules and the command lines, no function takes a `TrainConfig` or a
    `RunConfig`, or an unnamed config (a parameter called `config` or `run` without a type)."""
    whole = sorted(
        {
            function
            for module, function, parameter, annotation in _signatures()
            if module not in WHOLE_RUN_MODULES
            and not module.startswith("cli.")
            and (
                (annotation is not None and ("RunConfig" in annotation or "TrainConfig" in annotation))
                or (annotation is None and parameter in ("config", "run"))
            )
        }
    )
    assert whole == [], whole  # each takes its sections, or a record its own module declares
    found = {(function, parameter) for _, function, parameter, _ in _signatures()}
    assert ("training.optim.build_optimizer", "config") in found  # the scan sees typed components (OptimConfig)
