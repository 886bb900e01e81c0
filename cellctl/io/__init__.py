"""The controller's hands on the cell: the session, the driver factory, the simulators' wiring."""
