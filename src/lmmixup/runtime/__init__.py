"""Running stages: the per-record executor, stage declarations, run-dir manifests and resume."""
