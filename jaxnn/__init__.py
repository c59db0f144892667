"""jaxnn: neural-network fundamentals in JAX, each equation of the notes as code.

Layers (``jaxnn.layers``: dense, activation, conv, pooling, flatten, residual) each
hold their forward and hand-written backward for one example; ``jaxnn.network`` chains
them with one forward loop and one δ recursion; ``jaxnn.models`` builds the notes'
``DenseNetwork`` and ``CNN`` on it. ``gradcheck`` compares manual, autodiff and finite
differences; ``sgd`` trains; ``fast`` holds the speed variants, tested equal.
"""

from jaxnn import (
    activations,
    backprop,
    checks,
    dense,
    fast,
    gradcheck,
    initializers,
    layers,
    losses,
    models,
    network,
    sgd,
)
from jaxnn.models import CNN, DenseNetwork
from jaxnn.network import Network

__all__ = [
    "CNN",
    "DenseNetwork",
    "Network",
    "activations",
    "backprop",
    "checks",
    "dense",
    "fast",
    "gradcheck",
    "initializers",
    "layers",
    "losses",
    "models",
    "network",
    "sgd",
]
__version__ = "0.1.0"
