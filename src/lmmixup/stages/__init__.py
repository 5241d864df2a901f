"""The stages of the method, one module each; `lmmixup run` chains them in `PIPELINE_ORDER`."""

PIPELINE_ORDER = ("import", "rate", "split", "cluster", "distill", "rerate", "select")
"""The stage folders of a run directory, in the order `lmmixup run` writes them."""
