"""A residual block, beyond the notes: a = a_prev + F(a_prev), F a sequence of layers.

F runs through ``jaxnn.network``'s forward loop and its δ recursion, unchanged. The
input reaches the output by two branches, the identity and F, so its δ is the sum of
what comes back along each:

    δ_prev = δ + (δ carried back through F)

F must give an output of its input's shape. Params are F's list of per-layer params.
"""

from dataclasses import dataclass
from typing import ClassVar

import jax
import jax.numpy as jnp

import jaxnn.network as network
from jaxnn.layers.base import register


@register
@dataclass(frozen=True)
class Residual:
    """a = a_prev + F(a_prev) with F = ``layers``."""

    layers: tuple
    kind: ClassVar[str] = "residual"

    def __post_init__(self):
        object.__setattr__(self, "layers", tuple(self.layers))

    def init(self, key, input_shape, method="he", dtype=jnp.float32, **kwargs):
        shape, params = network.init_layers(self.layers, key, input_shape, method, dtype,
                                            **kwargs)
        if tuple(shape) != tuple(input_shape):
            raise ValueError(f"a residual block's layers must keep the shape {input_shape}, "
                             f"they give {shape}")
        return tuple(input_shape), params

    def forward(self, params, a_prev: jax.Array):
        """a = a_prev + F(a_prev). Returns (a, the caches of F's layers)."""
        F, caches = network.forward(self.layers, params, a_prev)
        return a_prev + F, caches

    def backward(self, params, caches, delta: jax.Array):
        """δ_prev = δ (identity branch) + F's backward of δ; grads are F's."""
        grads, delta_F = network.backward(self.layers, params, caches, delta)
        return grads, delta + delta_F

    def kinks(self, params, caches):
        return network.layer_kinks(self.layers, params, caches)

    @classmethod
    def example(cls):
        from jaxnn.layers.activation import Activation
        from jaxnn.layers.dense import Dense

        return cls((Dense(4), Activation("tanh"), Dense(4))), (4,)
