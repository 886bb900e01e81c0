"""Plant models: plain Python machines with behaviour over time and no protocol."""
