"""`python -m cosmos_v2w_diffusers.demo` runs `cosmos_v2w_diffusers.cli.demo`."""

from .cli.demo import main

if __name__ == "__main__":
    main()
