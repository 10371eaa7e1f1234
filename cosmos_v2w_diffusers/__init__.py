"""NVIDIA Cosmos-Predict2 Video2World post-training on the Hugging Face stack.

The public names are imported on first use (PEP 562), so the command-line tools can answer `--help`
without loading torch, diffusers and transformers.
"""

from importlib import import_module

from .utils import log_escaping

log_escaping.install()

_EXPORTS = {
    "PRESETS": ".models.presets",
    "CosmosFewStepScheduler": ".generation.scheduler_few_step",
    "CosmosMultistepScheduler": ".generation.scheduler",
    "CosmosVideo2WorldPipeline": ".generation.pipeline",
    "ModelPreset": ".models.presets",
    "Video2WorldTrainDataset": ".data.samples",
    "get_preset": ".models.presets",
    "load_video2world_dataset": ".data.hf_dataset",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(_EXPORTS[name], __name__), name)
