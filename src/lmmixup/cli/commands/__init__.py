"""The subcommands of `lmmixup`, one module per command or group; `cli.app` registers them."""
