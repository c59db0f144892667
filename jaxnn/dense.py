"""Forward propagation of an N-layer dense network, in the notes' three forms.

Parameters are a list of N layers, layer l (l = 1..N, list index l-1) being
``{"W": (n_l, n_{l-1}), "b": (n_l,)}``, the notes' shapes. For one example, a^[0] = x and

    z^[l] = W^[l] a^[l-1] + b^[l]        (1)   jaxnn.layers.Dense
    a^[l] = g^[l](z^[l])                 (2)   jaxnn.layers.Activation

with one hidden activation g^[1] = ... = g^[N-1] and an output g^[N] (identity for
regression, sigmoid for binary, softmax for multiclass classification). Erratum: the
notes write the output layer of their two-layer example as z^[2] = W^[2] x + b^[2];
it takes the hidden activations, z^[2] = W^[2] a^[1] + b^[2], as (1) says.

(a) ``forward``: one example, x of shape (n_0,), as the equations read (the network's
    forward loop over Dense and Activation layers).
(b) ``forward_batch``: ``jax.vmap`` of (a); X of shape (m, n_0), the batch API.
(c) ``forward_matrix``: the notes' vectorised form Z^[l] = W^[l] A^[l-1] + b^[l] with
    examples as columns, A^[0] = X of shape (n_0, m): the same loop over the layers in
    their column form (``DenseColumns``).

The dtype follows the inputs: params and x must share one floating dtype.
"""

from collections.abc import Sequence
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from jaxnn import activations, checks, network
from jaxnn.layers import Activation, Dense

Params = list[dict[str, jax.Array]]


def init(
    key: jax.Array,
    sizes: Sequence[int],
    method: str = "he",
    dtype=jnp.float32,
    **kwargs,
) -> Params:
    """Parameters of a dense network with layer sizes (n_0, n_1, ..., n_N).

    W^[l] of shape (n_l, n_{l-1}) is drawn by the initialiser ``method`` ("zeros",
    "normal", "xavier_normal", "xavier_uniform", "he"; ``kwargs`` go to it, e.g.
    ``sigma`` for "normal"); b^[l] of shape (n_l,) starts at 0, a column vector as the
    notes' z = Wx + b needs (erratum: not a stack of transposed rows).
    """
    checks.key(key)
    sizes = check_sizes(sizes)
    checks.floating(dtype)
    keys = jax.random.split(key, len(sizes) - 1)
    return [Dense(n_out).init(k, (n_in,), method, dtype, **kwargs)[1]
            for k, n_in, n_out in zip(keys, sizes[:-1], sizes[1:], strict=True)]


def check_sizes(sizes: Sequence[int]) -> tuple[int, ...]:
    """Layer sizes as a tuple of at least two positive ints (numpy ints too), else ValueError."""
    sizes = checks.shape(sizes, "sizes")
    if len(sizes) < 2:
        raise ValueError(f"sizes must be at least two positive ints (n_0, ..., n_N), got {sizes}")
    return sizes


def check_names(hidden: str, output: str) -> None:
    """Raise ValueError unless ``hidden`` is a hidden and ``output`` an output activation."""
    if not isinstance(hidden, str) or hidden not in activations.HIDDEN:
        raise ValueError(
            f"hidden activation must be one of {activations.HIDDEN}, got {hidden!r}"
        )
    if not isinstance(output, str) or output not in activations.OUTPUTS:
        raise ValueError(
            f"output activation must be one of {activations.OUTPUTS}, got {output!r}"
        )


def check_params(params: Params):
    """Raise ValueError/TypeError unless params is a consistent dense network.

    Each layer must be {"W": (n_l, n_{l-1}), "b": (n_l,)}, consecutive layers must fit
    together (W^[l+1] takes the n_l outputs of W^[l]), every leaf one floating dtype,
    which is returned.
    """
    if not isinstance(params, list | tuple) or not params:
        raise TypeError(f"params must be a non-empty list of layers, got {type(params)}")
    for l, layer in enumerate(params, start=1):
        if not isinstance(layer, dict) or set(layer) != {"W", "b"} or jnp.ndim(layer["W"]) != 2:
            raise ValueError(f"layer {l} must be a dict {{'W': (n_l, n_l-1), 'b': (n_l,)}}, "
                             f"got {jax.tree.map(np.shape, layer)!r}")
    sizes = sizes_of(params)
    expected = [{"W": jax.ShapeDtypeStruct((n, n_prev), jnp.float32),
                 "b": jax.ShapeDtypeStruct((n,), jnp.float32)}
                for n_prev, n in zip(sizes[:-1], sizes[1:], strict=True)]
    return checks.params_like(list(params), expected)


def check_input(params: Params, X: ArrayLike, batch: bool = True) -> None:
    """Raise unless X is (m, n_0) (or (n_0,) with batch=False) in the params' dtype."""
    dtype = check_params(params)
    checks.inputs(X, sizes_of(params)[:1], dtype, batch=batch)


def sizes_of(params: Params) -> tuple[int, ...]:
    """(n_0, n_1, ..., n_N) read off the shapes of W^[1], ..., W^[N]."""
    return (jnp.shape(params[0]["W"])[1],) + tuple(jnp.shape(p["W"])[0] for p in params)


def layers(sizes: Sequence[int], hidden: str) -> tuple:
    """Dense(n_1), g, Dense(n_2), ..., Dense(n_N): a network's layers after the input n_0."""
    out = []
    for n in sizes[1:]:
        out += [Dense(n), Activation(hidden)]
    return tuple(out[:-1])


def with_activations(params: Params) -> list:
    """[p_1, {}, p_2, ..., p_N]: the per-layer params of ``layers(params, g)``."""
    out = []
    for p in params:
        out += [p, {}]
    return out[:-1]


def layer(W: jax.Array, b: jax.Array, a_prev: jax.Array) -> jax.Array:
    """z^[l] = W^[l] a^[l-1] + b^[l]. W: (n_l, n_{l-1}); a_prev: (n_{l-1},). Returns (n_l,)."""
    return Dense(jnp.shape(W)[0]).forward({"W": W, "b": b}, a_prev)[0]


def forward_cache(
    params: Params, x: ArrayLike, hidden: str, output: str
) -> tuple[list[jax.Array], list[jax.Array]]:
    """Forward pass for one example keeping what backprop needs.

    x: shape (n_0,). Returns (zs, a_s): zs[l-1] = z^[l] of shape (n_l,) for l = 1..N,
    a_s[l] = a^[l] for l = 0..N (a_s[0] = x, a_s[N] = ŷ).
    """
    check_names(hidden, output)
    check_input(params, x, batch=False)
    z, caches = network.forward(layers(sizes_of(params), hidden), with_activations(params),
                                jnp.asarray(x))
    # a dense layer keeps its input a^[l-1], an activation its input z^[l]
    return caches[1::2] + [z], caches[0::2] + [activations.get(output).g(z)]


def logits(params: Params, x: ArrayLike, hidden: str) -> jax.Array:
    """z^[N] for one example x of shape (n_0,); the input to the stable losses."""
    check_names(hidden, "identity")
    check_input(params, x, batch=False)
    return network.forward(layers(sizes_of(params), hidden), with_activations(params),
                           jnp.asarray(x))[0]


def forward(params: Params, x: ArrayLike, hidden: str = "relu", output: str = "identity"):
    """(a) ŷ = a^[N] for one example x of shape (n_0,). Returns shape (n_N,)."""
    check_names(hidden, output)
    return activations.get(output).g(logits(params, x, hidden))


def forward_batch(
    params: Params, X: ArrayLike, hidden: str = "relu", output: str = "identity"
) -> jax.Array:
    """(b) ``jax.vmap`` of ``forward`` over examples. X: (m, n_0). Returns (m, n_N)."""
    check_names(hidden, output)
    check_input(params, X)
    return jax.vmap(forward, in_axes=(None, 0, None, None))(params, X, hidden, output)


@dataclass(frozen=True)
class DenseColumns:
    """The dense layer on examples as columns: Z^[l] = W^[l] A^[l-1] + b^[l] (b added to
    every column); its backward Δ^[l] A^[l-1]ᵀ (summed over the m columns), Δ^[l] 1 and
    W^[l]ᵀ Δ^[l]. A: (n_{l-1}, m)."""

    def forward(self, params, A):
        return params["W"] @ A + params["b"][:, None], A

    def backward(self, params, A, Delta):
        return {"W": Delta @ A.T, "b": jnp.sum(Delta, axis=1)}, params["W"].T @ Delta


def columns(params: Params, hidden: str) -> tuple:
    """The network's layers in the column form: DenseColumns, g, ..., DenseColumns."""
    return tuple(DenseColumns() if isinstance(layer, Dense) else layer
                 for layer in layers(sizes_of(params), hidden))


def forward_matrix_cache(
    params: Params, X: ArrayLike, hidden: str, output: str
) -> tuple[list[jax.Array], list[jax.Array]]:
    """(c) Z^[l] = W^[l] A^[l-1] + b^[l], A^[l] = g^[l](Z^[l]), examples as columns.

    X: A^[0] of shape (n_0, m). Returns (Zs, As) as ``forward_cache`` does, each
    Z^[l], A^[l] of shape (n_l, m). The softmax output normalises each column (axis 0).
    """
    check_names(hidden, output)
    check_params(params)
    n_0 = jnp.shape(params[0]["W"])[1]
    if not hasattr(X, "shape") or jnp.ndim(X) != 2 or jnp.shape(X)[0] != n_0:
        raise ValueError(
            f"the matrix form expects A^[0] = X of shape (n_0={n_0}, m), examples as columns, "
            f"got {'shape ' + str(jnp.shape(X)) if hasattr(X, 'shape') else type(X).__name__}"
        )
    if jnp.result_type(X) != jnp.result_type(params[0]["W"]):
        raise TypeError(
            f"input dtype {jnp.result_type(X)} differs from parameter dtype "
            f"{jnp.result_type(params[0]['W'])}; cast one to the other (no silent promotion)"
        )
    Z, caches = network.forward(columns(params, hidden), with_activations(params),
                                jnp.asarray(X))
    A_N = activations.softmax(Z, axis=0) if output == "softmax" else \
        activations.get(output).g(Z)
    return caches[1::2] + [Z], caches[0::2] + [A_N]


def forward_matrix(
    params: Params, X: ArrayLike, hidden: str = "relu", output: str = "identity"
) -> jax.Array:
    """(c) A^[N] from the matrix form. X: (n_0, m) (examples as columns). Returns (n_N, m)."""
    return forward_matrix_cache(params, X, hidden, output)[1][-1]
