"""`python -m lmmixup.cli`: the same as the `lmmixup` command."""

from lmmixup.cli.app import main

main()
