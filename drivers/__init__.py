"""Device drivers behind one small async protocol (DESIGN §3); no cellctl imports here."""
