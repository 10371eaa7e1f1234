"""The command-line tools' mains (`python -m cosmos_v2w_diffusers.<tool>` runs each)."""
