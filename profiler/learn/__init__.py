"""Learning from measurements: compare them with every estimator, and calibrate correction factors."""
