"""NVIDIA Cosmos-Predict2 Video2World post-training on the Hugging Face stack."""

from .data.hf_dataset import load_video2world_dataset
from .data.samples import Video2WorldTrainDataset
from .pipeline import CosmosVideo2WorldPipeline
from .presets import PRESETS, ModelPreset, get_preset
from .scheduler import CosmosMultistepScheduler

__all__ = [
    "PRESETS",
    "CosmosMultistepScheduler",
    "CosmosVideo2WorldPipeline",
    "ModelPreset",
    "Video2WorldTrainDataset",
    "get_preset",
    "load_video2world_dataset",
]
