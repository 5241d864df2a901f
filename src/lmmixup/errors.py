"""Errors that the CLI reports as a one-line reason (exit code 2)."""


class LmmixupError(Exception):
    """A user-facing failure: bad input, bad config, a refused resume, a missing asset."""


class ConfigError(LmmixupError):
    """The configuration is invalid (unknown key, wrong type, bad value)."""


class StageMismatchError(LmmixupError):
    """A stage's existing output was made with a different config or different inputs."""
