"""The control of one batch: PackML machine, controller, executor, interlocks, safe state."""
