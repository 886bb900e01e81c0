"""cellctl's benchmarks: each figure beside the raw library (or a peer) doing the same work."""
