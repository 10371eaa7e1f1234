"""Sampling: the pipeline, its schedulers and accelerations, long videos, the generation runner and its flags."""
