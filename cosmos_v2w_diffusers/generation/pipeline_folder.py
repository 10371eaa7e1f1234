"""The folder a `CosmosVideo2WorldPipeline` is saved in: one diffusers' own `Cosmos2VideoToWorldPipeline` loads too.

Its `model_index.json` names the stock class and `scheduler/` holds the Euler scheduler the stock pipeline drives;
NVIDIA's sampler (or a distilled student's), when the pipeline holds it, is kept beside in `scheduler_nvidia/`,
which `from_pretrained` reads back (diffusers' loaders skip a folder their index does not name). diffusers'
`save_pretrained` writes the index of the class that saves; nothing in diffusers writes one for another class.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from diffusers import FlowMatchEulerDiscreteScheduler
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from .scheduler import CosmosMultistepScheduler
from .scheduler_few_step import CosmosFewStepScheduler

# Where NVIDIA's sampler is kept, and the `model_index.json` keys that say so and who saved the folder (diffusers'
# loaders ignore keys that start with "_").
NVIDIA_SAMPLER_FOLDER = "scheduler_nvidia"
SAVED_SAMPLER_KEY, SAVED_BY_KEY = "_nvidia_sampler", "_saved_by"
# The samplers that folder may hold: NVIDIA's multistep sampler, or a distilled student's few-step one.
_SAMPLERS = {cls.__name__: cls for cls in (CosmosMultistepScheduler, CosmosFewStepScheduler)}


def saved_sampler(pipeline_class: Any, path: str | Path, kwargs: dict) -> SchedulerMixin | None:
    """The scheduler a pipeline loaded from `path` samples with, where it is not the folder's `scheduler/`: the
    sampler kept in `scheduler_nvidia/`, or NVIDIA's for a folder another class saved (NVIDIA's repos ship an
    Euler scheduler). None: the folder's own `scheduler/` (a pipeline saved by `pipeline_class` with Euler).
    `kwargs`: `from_pretrained`'s, whose Hub arguments reach the index."""
    hub_kwargs = {k: kwargs[k] for k in ("cache_dir", "local_files_only", "revision", "token") if k in kwargs}
    index = pipeline_class.load_config(path, **hub_kwargs)
    if index.get(SAVED_SAMPLER_KEY):
        saved = CosmosMultistepScheduler.load_config(path, subfolder=index[SAVED_SAMPLER_KEY], **hub_kwargs)
        return _SAMPLERS.get(saved.get("_class_name"), CosmosMultistepScheduler).from_config(saved)
    if pipeline_class.__name__ not in (index.get("_class_name"), index.get(SAVED_BY_KEY)):
        return CosmosMultistepScheduler()
    return None


def make_stock_loadable(folder: Path, scheduler: SchedulerMixin, saved_by: str) -> None:
    """Rewrite a just-saved pipeline `folder` for diffusers' stock class: its index names that class (and
    `saved_by`), and NVIDIA's sampler, if `scheduler` is one, moves to `scheduler_nvidia/` beside an Euler one."""
    index = json.loads((folder / "model_index.json").read_text())
    index.update({"_class_name": "Cosmos2VideoToWorldPipeline", SAVED_BY_KEY: saved_by})
    index.pop("disable_guardrail", None)  # ours; the stock class takes no such argument
    if isinstance(scheduler, tuple(_SAMPLERS.values())):
        shutil.rmtree(folder / NVIDIA_SAMPLER_FOLDER, ignore_errors=True)
        os.replace(folder / "scheduler", folder / NVIDIA_SAMPLER_FOLDER)
        FlowMatchEulerDiscreteScheduler(use_karras_sigmas=True).save_pretrained(folder / "scheduler")
        index.update(
            scheduler=["diffusers", "FlowMatchEulerDiscreteScheduler"],
            **{SAVED_SAMPLER_KEY: NVIDIA_SAMPLER_FOLDER},
        )
    (folder / "model_index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
