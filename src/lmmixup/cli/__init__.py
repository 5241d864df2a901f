"""The command line: `lmmixup` (entry point `lmmixup.cli.app:main`)."""
