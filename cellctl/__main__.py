"""`python -m cellctl`: the same as the `cellctl` command."""

from cellctl.cli import main

main()
