"""Writing a run's weights for other tools: diffusers folders, LoRA files, conversion to and from NVIDIA's .pt."""
