"""The networks and what they read and write: presets, loading, attention, latents, text encoding, and NVIDIA's
native checkpoint format."""
