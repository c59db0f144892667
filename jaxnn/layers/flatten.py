"""Flatten, for one example: an (H, W, C) volume becomes a vector of H·W·C numbers.

The notes' example: a 64 × 64 × 3 colour image becomes 12,288 inputs of a dense layer.
Entry (r, s, c) lands at index (r·W + s)·C + c (row-major). The backward pass reshapes
δ back to the volume.
"""

import math
from dataclasses import dataclass
from typing import ClassVar

import jax

from jaxnn.layers.base import register


@register
@dataclass(frozen=True)
class Flatten:
    """(H, W, C) -> (H·W·C,); no parameters."""

    kind: ClassVar[str] = "flatten"

    def init(self, key, input_shape, method="he", dtype=None, **kwargs):
        return (math.prod(input_shape),), {}

    def forward(self, params, a_prev: jax.Array):
        """a = a_prev in row-major order, shape (H·W·C,); the cache is a_prev (its shape)."""
        return a_prev.reshape(-1), a_prev

    def backward(self, params, a_prev: jax.Array, delta: jax.Array):
        """δ_prev = δ reshaped to (H, W, C)."""
        return {}, delta.reshape(a_prev.shape)

    @classmethod
    def example(cls):
        return cls(), (3, 2, 2)
