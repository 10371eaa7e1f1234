"""The training flags, declared by section: one frozen dataclass per concern, in its own module, each field a flag
with its help, choices and bounds (`utils/flags.py`), and each section checking its own fields (`check()`). A
flag's section module is where it is defined and validated; the component the section is handed is where it is
used.

The same classes hold the flags as given (a `TrainConfig`, `config.py`: a field left None is filled in later) and
the run's resolved values (a `RunConfig`, `run_config.py`), which hands `run.optim` to the optimizer,
`run.checkpointing` to the checkpointer, and so on. `--help` lists the flags by section. No torch here: `--help`
imports this package.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from ...utils.flags import Flags
from .checkpointing import CheckpointConfig
from .data import DataConfig
from .distill import DistillConfig
from .hub import HubConfig
from .optim import OptimConfig
from .parallel import ParallelConfig
from .validation import ValidationConfig
from .weights import WeightsConfig

# A config's attribute name -> its section (in --help's order).
SECTIONS: dict[str, type[Flags]] = {
    "data": DataConfig,
    "weights": WeightsConfig,
    "optim": OptimConfig,
    "checkpointing": CheckpointConfig,
    "hub": HubConfig,
    "parallel": ParallelConfig,
    "validation": ValidationConfig,
    "distill": DistillConfig,
}
# Each flag's name -> its section's attribute name (every flag is in exactly one section: a test checks).
SECTION_OF_FIELD = {f.name: name for name, section in SECTIONS.items() for f in dataclasses.fields(section)}


@dataclass(frozen=True)
class Sections:
    """The eight sections of a run's flags, read flat as well: `config.max_iter` is `config.optim.max_iter` (for
    the trainer and the command line, which see the whole run; a component takes its section). The flags as given
    (`TrainConfig`) and the resolved run (`RunConfig`) are both made of them."""

    data: DataConfig = field(default_factory=DataConfig)
    weights: WeightsConfig = field(default_factory=WeightsConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    checkpointing: CheckpointConfig = field(default_factory=CheckpointConfig)
    hub: HubConfig = field(default_factory=HubConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)

    def __getattr__(self, name: str) -> Any:
        section = SECTION_OF_FIELD.get(name)
        if section is None:
            raise AttributeError(f"{type(self).__name__} has no field {name!r}")
        return getattr(getattr(self, section), name)

    def values(self) -> dict[str, Any]:
        """Every field by its flag's name, section by section."""
        return {name: getattr(self, name) for name in SECTION_OF_FIELD}

    def hub_kwargs(self) -> dict:
        """What `from_pretrained` takes besides the name: --revision, --variant and --cache_dir, where given."""
        return self.weights.hub_kwargs()


__all__ = [
    "SECTIONS",
    "SECTION_OF_FIELD",
    "CheckpointConfig",
    "DataConfig",
    "DistillConfig",
    "Sections",
    "HubConfig",
    "OptimConfig",
    "ParallelConfig",
    "ValidationConfig",
    "WeightsConfig",
]
