"""inception_jax: Inception-v4 / Inception-ResNet networks and residual-scaling ablations in JAX + Flax NNX."""

__version__ = "0.1.0"
