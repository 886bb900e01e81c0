"""Simulators: plant models, protocol servers that expose them, and a TCP fault proxy."""
