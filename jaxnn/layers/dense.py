"""The dense layer of the notes: z^[l] = W^[l] a^[l-1] + b^[l], for one example.

W^[l]: (n_l, n_{l-1}); b^[l]: (n_l,), a column vector (erratum: not a stack of
transposed rows); a^[l-1]: (n_{l-1},). The activation a^[l] = g^[l](z^[l]) is a layer
of its own (``jaxnn.layers.activation``), so that δ^[l] = (W^[l+1]ᵀ δ^[l+1]) ∘ g'(z^[l])
is this layer's backward (the W^[l+1]ᵀ δ^[l+1]) followed by the activation's (∘ g').
"""

from dataclasses import dataclass
from typing import ClassVar

import jax
import jax.numpy as jnp

from jaxnn import checks, initializers
from jaxnn.layers.base import register


@register
@dataclass(frozen=True)
class Dense:
    """n units: z = W a_prev + b with W (n, n_prev) and b (n,)."""

    n: int
    kind: ClassVar[str] = "dense"

    def __post_init__(self):
        object.__setattr__(self, "n", checks.integer(self.n, "the number of units n", 1))

    def init(self, key, input_shape, method="he", dtype=jnp.float32, **kwargs):
        """((n,), {"W": (n, n_prev) drawn by ``method``, "b": zeros (n,)})."""
        (n_prev,) = checks.shape(input_shape, "a dense layer's input shape (n_prev,)", 1)
        W = initializers.get(method)(key, (self.n, n_prev), dtype, **kwargs)
        return (self.n,), {"W": W, "b": jnp.zeros((self.n,), dtype)}

    def forward(self, params, a_prev: jax.Array):
        """z^[l] = W^[l] a^[l-1] + b^[l]. a_prev: (n_prev,). Returns (z (n,), cache a_prev)."""
        return params["W"] @ a_prev + params["b"], a_prev

    def backward(self, params, a_prev: jax.Array, delta: jax.Array):
        """∂L/∂W^[l] = δ^[l] a^[l-1]ᵀ, ∂L/∂b^[l] = δ^[l], δ_prev = W^[l]ᵀ δ^[l]. delta: (n,)."""
        return {"W": jnp.outer(delta, a_prev), "b": delta}, params["W"].T @ delta

    @classmethod
    def example(cls):
        return cls(3), (4,)
