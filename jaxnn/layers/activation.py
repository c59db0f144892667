"""The activation layer: a^[l] = g(z^[l]) element by element, for one example.

g and g' come from ``jaxnn.activations`` (sigmoid, ReLU, tanh, identity). The layer has
no parameters; its backward is the notes' "∘ g'(z^[l])". Softmax is not elementwise and
is an output g^[N] of ``jaxnn.network.Network``, not a layer.
"""

from dataclasses import dataclass
from typing import ClassVar

import jax

from jaxnn import activations
from jaxnn.layers.base import register


@register
@dataclass(frozen=True)
class Activation:
    """a = g(z) for g named ``name`` ("sigmoid", "relu", "tanh", "identity")."""

    name: str
    kind: ClassVar[str] = "activation"

    def __post_init__(self):
        if not isinstance(self.name, str) or self.name not in activations.HIDDEN:
            raise ValueError(
                f"hidden activation must be one of {activations.HIDDEN}, got {self.name!r}")

    def init(self, key, input_shape, method="he", dtype=None, **kwargs):
        """(input_shape, {}): the shape is kept, and there are no parameters."""
        return tuple(input_shape), {}

    def forward(self, params, z: jax.Array):
        """a^[l] = g(z^[l]), any shape. Returns (a, cache z)."""
        return activations.get(self.name).g(z), z

    def backward(self, params, z: jax.Array, delta: jax.Array):
        """δ_z = δ_a ∘ g'(z^[l]); no parameter gradient ({})."""
        return {}, delta * activations.get(self.name).g_prime(z)

    def kinks(self, params, z: jax.Array):
        """ReLU is not differentiable at 0: the sign pattern z > 0; None for smooth g."""
        return z > 0 if self.name == "relu" else None

    @classmethod
    def example(cls):
        return cls("tanh"), (5,)
