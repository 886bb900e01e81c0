"""What the command line draws: the live run view, tag tables, plans, states."""
