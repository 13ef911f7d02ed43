"""Predictions checked against published GPU measurements: the rows file, the conversions, the run, the report."""
