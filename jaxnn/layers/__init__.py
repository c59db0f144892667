"""Layer kinds, one module each: init (shape inference), forward, hand-written backward.

See ``jaxnn.layers.base`` for the protocol. ``REGISTRY`` maps each kind's name to its
class; ``jaxnn.gradcheck.check_layer`` checks any layer against ``jax.vjp`` and finite
differences, and the tests do so for every registered kind.
"""

from jaxnn.layers.activation import Activation
from jaxnn.layers.base import REGISTRY, Layer, register
from jaxnn.layers.conv import Conv
from jaxnn.layers.dense import Dense
from jaxnn.layers.flatten import Flatten
from jaxnn.layers.pool import AvgPool, MaxPool
from jaxnn.layers.residual import Residual

__all__ = ["REGISTRY", "Activation", "AvgPool", "Conv", "Dense", "Flatten", "Layer", "MaxPool",
           "Residual", "register"]
