"""The batch record: an append-only journal of controller events, each row chained to the one
before it by SHA-256 (rows, events, store, writer, verify, location)."""
