"""The operations of the networks that a platform backend may compute its own way, and how it installs its forms.

The networks are written with stock JAX and Flax: XLA's convolution, pooling and BatchNorm gradients through plain
autodiff, which is what GPUs and TPUs run. A few operations are marked `replaceable`: the convolution of every
`nnx.Conv`, BatchNorm + ReLU in training, the two poolings, a module's branches, the residual blocks' scaled
up-projection and final ReLU, and the scan over a stage's blocks. A backend (`inception_jax/cpu`) is a `Backend`
whose `replacements` map some of them to forms tuned for its platform; a program traced inside
`kernels.tracing()` uses those forms, every other program the stock ones. A replacement computes the same function
(outputs and gradients equal up to float rounding): it may change how, never what.

This module knows no backend and no network; it must not import either.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import functools
import types
from collections.abc import Callable, Iterator, Mapping
from typing import Any, ClassVar, TypeVar

F = TypeVar("F", bound=Callable[..., Any])

_NO_REPLACEMENTS: Mapping[Callable, Callable] = types.MappingProxyType({})
# The replacements of the program being traced: read when a replaceable op is called, that is, while tracing.
_REPLACEMENTS: contextvars.ContextVar[Mapping[Callable, Callable]] = contextvars.ContextVar(
    "replacements", default=_NO_REPLACEMENTS)


def replaceable(stock: F) -> F:
    """Mark `stock` as an operation a backend may replace: calling the result calls the installed replacement, if
    there is one, else `stock`. The result is the key a backend's `replacements` use."""

    @functools.wraps(stock)
    def op(*args, **kwargs):
        return _REPLACEMENTS.get().get(op, stock)(*args, **kwargs)

    op.stock = stock  # type: ignore[attr-defined]
    return op  # type: ignore[return-value]


@dataclasses.dataclass(frozen=True)
class Backend:
    """How a program computes the replaceable operations: this class, the stock forms; a backend subclasses it.

    Frozen and comparable, so a step's configuration can hold one and two equal choices are one program.
    """

    name: ClassVar[str] = "stock"

    def replacements(self) -> Mapping[Callable, Callable]:
        """Replaceable op -> the function computing it under these kernels (ops absent here stay stock)."""
        return _NO_REPLACEMENTS

    @contextlib.contextmanager
    def tracing(self) -> Iterator[None]:
        """Install these kernels while a program is traced under it (a stock program installs no replacement, so
        it is stock whatever encloses it)."""
        token = _REPLACEMENTS.set(types.MappingProxyType(dict(self.replacements())))
        try:
            yield
        finally:
            _REPLACEMENTS.reset(token)


STOCK = Backend()
