"""`python -m cosmos_v2w_diffusers.convert` runs `cosmos_v2w_diffusers.cli.convert`."""

import sys

from .cli.convert import main

if __name__ == "__main__":
    sys.exit(main())
