"""Post-train Cosmos-Predict2 Video2World (not yet implemented: see the training issue)."""

import sys

if __name__ == "__main__":
    sys.exit("train_video2world.py: not yet implemented (training issue).")
