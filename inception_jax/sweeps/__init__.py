"""Sweeps: rows from a config's get_sweep or a spreadsheet, their checks before anything trains, and the runner
that trains them in order and writes results.csv and the report.
"""
