"""Training: the loop, the compiled steps and their programs, run setup, optimizer, shardings, checkpoints,
metrics writers, the dying diagnostics and verdicts, and warm starts from other runs' weights.
"""
