"""`python -m cosmos_v2w_diffusers.tiny_model` runs `cosmos_v2w_diffusers.cli.tiny_model`."""

from .cli.tiny_model import main

if __name__ == "__main__":
    main()
