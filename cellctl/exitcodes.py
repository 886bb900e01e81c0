"""The one exit-code convention of the whole CLI (stated in the README)."""

OK = 0
#: Bad input: a file, an argument, a usage error. Nothing was touched.
BAD_INPUT = 1
#: A device or communication failure.
DEVICE_FAILURE = 2
#: A batch that ended other than Complete (from the controller on).
BATCH_NOT_COMPLETE = 3
#: Ctrl-C cut a one-shot command short.
INTERRUPTED = 130
