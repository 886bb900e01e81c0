"""The web view of `cellctl serve --http`: the cell in a browser (pages, a JSON API, live
events), served from a thread of its own (cellctl.web.thread)."""

#: Where `--http` given alone listens (no imports here: `cellctl --help` stays fast).
DEFAULT_ADDR = "127.0.0.1"
DEFAULT_PORT = 8480
