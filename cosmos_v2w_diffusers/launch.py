"""`python -m cosmos_v2w_diffusers.launch` runs `cosmos_v2w_diffusers.cli.launch`."""

from .cli.launch import main

if __name__ == "__main__":
    main()
