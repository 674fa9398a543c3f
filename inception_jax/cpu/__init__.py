"""The CPU backend: everything that makes training fast on XLA:CPU and nothing the networks need elsewhere.

* `backend.py`: `CpuBackend`, the forms of the models' replaceable operations (models/ops.py) tuned for XLA:CPU,
  which a program traced for CPU installs: hand-written convolution gradients (`convolution.py`,
  `kernel_gradients.py`), pooling gradients (`pooling.py`), the fused BatchNorm-ReLU backward (`batchnorm.py`), the
  folded residual scale (`projection.py`), the fused opening 1x1 convolutions and the deferred ReLU mask in the
  scan over blocks (`blocks.py`); and `backend_for`, which picks stock or CPU kernels for a program's platform.
* `codegen.py`: the options XLA:CPU compiles the steps with.
* `host_memory.py`: the host allocator and how single-device steps are dispatched.

Importing this package imports nothing else: `host_memory` and `codegen` must load before JAX does.
"""
