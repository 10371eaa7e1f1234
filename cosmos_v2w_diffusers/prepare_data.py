"""`python -m cosmos_v2w_diffusers.prepare_data` runs `cosmos_v2w_diffusers.cli.prepare_data`."""

import sys

from .cli.prepare_data import main

if __name__ == "__main__":
    sys.exit(main())
