"""inception_jax: Inception-v4 / Inception-ResNet networks and residual-scaling ablations in JAX + Flax NNX."""

__version__ = "0.1.0"

# When the command started (seconds since the epoch), set by `python -m inception_jax.main` before it re-executes
# itself (host_memory.py), so the main job can say how much of its time went into training.
COMMAND_STARTED = "INCEPTION_JAX_COMMAND_STARTED"
