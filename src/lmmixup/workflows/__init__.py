"""Whole jobs that chain the stages: `lmmixup run` (pipeline) and `lmmixup experiment`."""
