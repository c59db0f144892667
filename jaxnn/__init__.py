"""jaxnn: neural-network fundamentals in JAX, each equation of the notes as code.

Modules: activations, losses, initializers, dense (forward), backprop (the δ
recursion), gradcheck, sgd (explicit gradient descent), model (DenseNetwork).
"""

from jaxnn import activations, backprop, dense, gradcheck, initializers, losses, model, sgd
from jaxnn.model import DenseNetwork

__all__ = [
    "DenseNetwork",
    "activations",
    "backprop",
    "dense",
    "gradcheck",
    "initializers",
    "losses",
    "model",
    "sgd",
]
__version__ = "0.1.0"
