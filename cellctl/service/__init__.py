"""`cellctl serve`: the controller as a long-running service (core), its OPC UA surface,
users and roles, certificates and trust, and the client the remote CLI uses."""
