"""Evaluating what the pipeline produces: the distiller on held-out MIXTURE data (SPEC stage 9)."""
