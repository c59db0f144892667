"""Activation functions g and their elementwise derivatives g'.

The notes split a neuron into two computations: z = wᵀx + b, then a = g(z), with

    sigmoid  g(z) = 1 / (1 + e^{-z})          g'(z) = g(z) (1 - g(z))
    ReLU     g(z) = max(z, 0)                  g'(z) = 1[z > 0]
    tanh     g(z) = (e^z - e^{-z}) / (e^z + e^{-z})   g'(z) = 1 - g(z)^2
    identity g(z) = z                          g'(z) = 1   (regression output)

ReLU's derivative at exactly 0 is taken as 0 (the indicator z > 0), which is also what
``jax.grad(jax.nn.relu)`` gives; ``jnp.maximum(z, 0)`` alone would differentiate to 0.5
there.

Softmax, the multiclass output, is not elementwise: its Jacobian is
diag(s) - s sᵀ, applied here as a Jacobian-vector product.

Every function takes an array of any shape and returns one of the same shape and dtype.
"""

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike


def identity(z: ArrayLike) -> jax.Array:
    """g(z) = z, the regression output g^[N]."""
    return jnp.asarray(z)


def identity_prime(z: ArrayLike) -> jax.Array:
    """g'(z) = 1."""
    return jnp.ones_like(z)


def sigmoid(z: ArrayLike) -> jax.Array:
    """g(z) = 1 / (1 + e^{-z}), computed without overflow for large |z|."""
    return jax.nn.sigmoid(z)


def sigmoid_prime(z: ArrayLike) -> jax.Array:
    """g'(z) = g(z) (1 - g(z))."""
    s = sigmoid(z)
    return s * (1 - s)


def relu(z: ArrayLike) -> jax.Array:
    """g(z) = max(z, 0), the notes' rectified linear unit."""
    z = jnp.asarray(z)
    return jnp.where(z > 0, z, jnp.zeros_like(z))


def relu_prime(z: ArrayLike) -> jax.Array:
    """g'(z) = 1[z > 0]; the value at z = 0 is 0 (matches jax.nn.relu)."""
    z = jnp.asarray(z)
    return (z > 0).astype(z.dtype)


def tanh(z: ArrayLike) -> jax.Array:
    """g(z) = (e^z - e^{-z}) / (e^z + e^{-z})."""
    return jnp.tanh(z)


def tanh_prime(z: ArrayLike) -> jax.Array:
    """g'(z) = 1 - tanh(z)^2."""
    t = jnp.tanh(z)
    return 1 - t * t


def softmax(z: ArrayLike, axis: int = -1) -> jax.Array:
    """ŷ_j = e^{z_j} / Σ_i e^{z_i}, with max(z) subtracted first so that no exp overflows.

    Args:
      z: logits, any shape; the classes lie along ``axis``.
    Returns:
      probabilities of the same shape, summing to 1 along ``axis``.
    """
    z = jnp.asarray(z)
    e = jnp.exp(z - jax.lax.stop_gradient(jnp.max(z, axis=axis, keepdims=True)))
    return e / jnp.sum(e, axis=axis, keepdims=True)


def softmax_jvp(z: ArrayLike, v: ArrayLike) -> jax.Array:
    """J(z) v for the softmax Jacobian J = diag(s) - s sᵀ, i.e. s ∘ (v - s·v).

    J is symmetric, so this is also Jᵀ v, the vector-Jacobian product backprop needs.

    Args:
      z: logits of shape (k,).
      v: a vector of shape (k,).
    Returns:
      shape (k,).
    """
    s = softmax(z)
    v = jnp.asarray(v)
    return s * (v - jnp.sum(s * v, axis=-1, keepdims=True))


class Activation(NamedTuple):
    """An activation g with its derivative g'; ``elementwise`` is False for softmax."""

    name: str
    g: Callable[[ArrayLike], jax.Array]
    g_prime: Callable[[ArrayLike], jax.Array] | None
    elementwise: bool = True


ACTIVATIONS: dict[str, Activation] = {
    "identity": Activation("identity", identity, identity_prime),
    "sigmoid": Activation("sigmoid", sigmoid, sigmoid_prime),
    "relu": Activation("relu", relu, relu_prime),
    "tanh": Activation("tanh", tanh, tanh_prime),
    "softmax": Activation("softmax", softmax, None, elementwise=False),
}

HIDDEN = ("sigmoid", "relu", "tanh", "identity")
OUTPUTS = ("identity", "sigmoid", "softmax")


def get(name: str) -> Activation:
    """The activation called ``name``; an unknown name raises ValueError listing the known ones."""
    if not isinstance(name, str) or name not in ACTIVATIONS:
        raise ValueError(
            f"unknown activation {name!r}; expected one of {sorted(ACTIVATIONS)}"
        )
    return ACTIVATIONS[name]
