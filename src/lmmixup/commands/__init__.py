"""Command groups of the `lmmixup` CLI, one typer sub-app per module (registered in `lmmixup.cli`)."""
