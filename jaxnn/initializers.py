"""Parameter initialisation: the notes' "do not use zeros", N(0, 0.1), Xavier and He.

Every initialiser takes a ``jax.random`` key, a weight shape and a dtype. A shape is
(fan_out, fan_in) for a dense W^[l] of shape (n_l, n_{l-1}); for a convolution kernel
HWIO (kh, kw, C_in, C_out), fan_in = kh·kw·C_in and fan_out = kh·kw·C_out.

    zeros            W = 0 (every hidden unit of a layer then stays identical)
    normal           W_ij ~ N(0, σ²), σ = 0.1 by default (the notes' N(0, 0.1))
    xavier_normal    W_ij ~ N(0, 2 / (fan_in + fan_out))         (Glorot & Bengio, 2010)
    xavier_uniform   W_ij ~ U(-r, r), r = sqrt(6 / (fan_in + fan_out))
    he               W_ij ~ N(0, 2 / fan_in)                      (He et al., 2015)

The notes' N(0, 0.1) is read as standard deviation 0.1.
"""

import math
import numbers
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp

from jaxnn import checks


def check_shape(shape: Sequence[int]) -> tuple[int, ...]:
    """A weight shape as a tuple of positive ints, else ValueError."""
    return checks.shape(shape, "a weight shape")


def _checked(key, shape, dtype) -> tuple[int, ...]:
    checks.key(key)
    checks.floating(dtype, "weights")
    return check_shape(shape)


def fans(shape: Sequence[int]) -> tuple[int, int]:
    """(fan_in, fan_out) of a dense (n_out, n_in) or HWIO (kh, kw, C_in, C_out) shape."""
    shape = check_shape(shape)
    if len(shape) == 2:
        return shape[1], shape[0]
    if len(shape) == 4:
        receptive = shape[0] * shape[1]
        return receptive * shape[2], receptive * shape[3]
    raise ValueError(f"expected a dense (n_out, n_in) or HWIO kernel shape, got {shape}")


def zeros(key: jax.Array, shape: Sequence[int], dtype=jnp.float32) -> jax.Array:
    """W = 0: kept to show why not (hidden units of a layer never become different)."""
    return jnp.zeros(_checked(key, shape, dtype), dtype)


def normal(key: jax.Array, shape: Sequence[int], dtype=jnp.float32, sigma: float = 0.1):
    """W_ij ~ N(0, σ²) with σ = 0.1, the notes' small random initialisation."""
    shape = _checked(key, shape, dtype)
    if (isinstance(sigma, bool) or not isinstance(sigma, numbers.Real)
            or not (math.isfinite(sigma) and sigma > 0)):
        raise ValueError(f"sigma must be a finite number > 0, got {sigma!r}")
    return sigma * jax.random.normal(key, shape, dtype)


def xavier_normal(key: jax.Array, shape: Sequence[int], dtype=jnp.float32) -> jax.Array:
    """W_ij ~ N(0, 2 / (fan_in + fan_out)) (Xavier/Glorot)."""
    shape = _checked(key, shape, dtype)
    fan_in, fan_out = fans(shape)
    std = (2.0 / (fan_in + fan_out)) ** 0.5
    return std * jax.random.normal(key, shape, dtype)


def xavier_uniform(key: jax.Array, shape: Sequence[int], dtype=jnp.float32) -> jax.Array:
    """W_ij ~ U(-r, r), r = sqrt(6 / (fan_in + fan_out)) (Xavier/Glorot)."""
    shape = _checked(key, shape, dtype)
    fan_in, fan_out = fans(shape)
    r = (6.0 / (fan_in + fan_out)) ** 0.5
    return jax.random.uniform(key, shape, dtype, -r, r)


def he(key: jax.Array, shape: Sequence[int], dtype=jnp.float32) -> jax.Array:
    """W_ij ~ N(0, 2 / fan_in) (He), suited to ReLU layers."""
    shape = _checked(key, shape, dtype)
    fan_in, _ = fans(shape)
    return (2.0 / fan_in) ** 0.5 * jax.random.normal(key, shape, dtype)


INITIALIZERS: dict[str, Callable] = {
    "zeros": zeros,
    "normal": normal,
    "xavier_normal": xavier_normal,
    "xavier_uniform": xavier_uniform,
    "he": he,
}


def get(name: str) -> Callable:
    """The initialiser called ``name``; unknown names raise ValueError listing the known ones."""
    if not isinstance(name, str) or name not in INITIALIZERS:
        raise ValueError(
            f"unknown initializer {name!r}; expected one of {sorted(INITIALIZERS)}"
        )
    return INITIALIZERS[name]


check_key = checks.key
