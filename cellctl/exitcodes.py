"""The one exit-code convention of the whole CLI (stated in the README)."""

OK = 0
#: Bad input: a file, an argument, a usage error. Nothing was touched.
BAD_INPUT = 1
#: A device or communication failure.
DEVICE_FAILURE = 2
#: A batch that ended other than Complete (from the controller on).
BATCH_NOT_COMPLETE = 3
#: An internal error (a bug): see the log.
INTERNAL_ERROR = 4
#: The safe state could not be confirmed on every device (the tags are named).
SAFE_STATE_UNCONFIRMED = 5
#: The journal cannot be opened or written, or its chain does not verify.
JOURNAL = 6
#: Refused: the state, a role, a login; a cell whose devices another batch holds.
REFUSED = 7
#: Ctrl-C cut a one-shot command short.
INTERRUPTED = 130
