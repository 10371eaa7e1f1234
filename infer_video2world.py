"""Generate videos with a post-trained Cosmos-Predict2 Video2World model (not yet implemented)."""

import sys

if __name__ == "__main__":
    sys.exit("infer_video2world.py: not yet implemented (pipeline issue).")
