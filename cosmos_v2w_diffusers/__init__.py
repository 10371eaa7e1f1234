"""NVIDIA Cosmos-Predict2 Video2World post-training on the Hugging Face stack."""

from .data.hf_dataset import load_video2world_dataset
from .data.samples import Video2WorldTrainDataset
from .presets import PRESETS, ModelPreset, get_preset

__all__ = ["PRESETS", "ModelPreset", "Video2WorldTrainDataset", "get_preset", "load_video2world_dataset"]
