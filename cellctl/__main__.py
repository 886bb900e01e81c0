"""`python -m cellctl`: the same as the `cellctl` command."""

from cellctl.entry import main

main()
