"""Training: the loop, evaluation, the run's checks, set-up, state and folder, the compiled steps and their
programs, optimizer, shardings, checkpoints, metrics writers, the dying diagnostics and verdicts, and warm starts
from other runs' weights.
"""
