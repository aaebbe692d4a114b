"""The exact discrete QCQP selector: its MILP, the Lagrangian (dual) bound and the interval certificate."""
