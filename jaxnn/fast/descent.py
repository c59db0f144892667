"""Gradient descent of a dense network with every W^[l] updated in place, block by block.

θ <- θ - α ∂L/∂θ with the numbers of ``sgd.update(params, grads, alpha)`` (up to
rounding), in less memory: the δ recursion (``jaxnn.network.backward`` over the
batched dense layers, which keep each ∂L/∂W^[l] as its factors Δ^[l], A^[l-1]) runs
first, as it reads the old W^[l+1]; then each W^[l] is updated in its own buffer,
``block_bytes`` of ∂L/∂W^[l] at a time, so that no ∂L/∂W^[l] is held whole.

The step is applied where ``ok`` (and ``allow``): ok certifies, before any gradient is
formed, that the loss and every gradient are finite: the loss is, every |δ| is below a
quarter of the dtype's largest number, and so is every ``gradient_bound``.
"""

import jax
import jax.numpy as jnp

from jaxnn import losses, network
from jaxnn.gradcheck import max_abs

BLOCK_BYTES = 8 * 2**20


def gradient_bound(Delta: jax.Array, A: jax.Array) -> jax.Array:
    """A bound of every |(Δᵀ A)_jk| = |Σ_i δ_ij a_ik|: m · max |δ_ij| · max |a_ik|.

    Delta: (m, n_l); A: (m, n_{l-1}). ∞ or NaN when Δ or A holds a NaN or ∞, so
    ``bound < limit`` is False for every non-finite input.
    """
    return Delta.shape[0] * max_abs(Delta) * max_abs(A)


def descend_weights(W: jax.Array, Delta: jax.Array, A: jax.Array, alpha, apply: jax.Array,
                    block_bytes: int = BLOCK_BYTES) -> jax.Array:
    """W^[l] - α Δᵀ A / m, never holding ∂L/∂W^[l] = Δᵀ A / m whole.

    Columns j..j+r of ∂L/∂W^[l] are Δᵀ A[:, j:j+r] / m: each block of r columns is
    computed, subtracted and written back into W (a ``fori_loop`` of
    ``dynamic_update_slice``, in W's own buffer when W is donated). Blocks of columns,
    not rows: ``jaxnn.parallel`` may split W's rows over devices, and row blocks would
    gather all of W on every device. Where ``apply`` is False, W comes back unchanged.

    W: (n_l, n_{l-1}); Delta: Δ^[l]ᵀ, (m, n_l); A: A^[l-1]ᵀ, (m, n_{l-1}); apply: bool ().
    """
    m = Delta.shape[0]
    n, k = W.shape
    Delta_T = jax.lax.optimization_barrier(Delta.T)  # read row by row (see delta_t_a)

    def cols(W, start, size):
        old = jax.lax.dynamic_slice_in_dim(W, start, size, axis=1)
        dW = (Delta_T @ jax.lax.dynamic_slice_in_dim(A, start, size, axis=1)) / m
        new = jnp.where(apply, old - alpha * dW, old)
        return jax.lax.dynamic_update_slice_in_dim(W, new, start, 1)

    r = max(1, min(k, block_bytes // max(1, n * W.dtype.itemsize)))
    if r == k:
        return cols(W, 0, k)
    W = jax.lax.fori_loop(0, k // r, lambda i, W: cols(W, i * r, r), W)
    return W if k % r == 0 else cols(W, k - k % r, k % r)


def descend(batched_layers, output: str, loss: str, params: list, X, Y, alpha,
            allow: jax.Array | None = None, block_bytes: int = BLOCK_BYTES):
    """One step of gradient descent in place: (new params, mean loss, ok).

    batched_layers: ``jaxnn.fast.batched(layer, factors=True)`` of a network of dense
    layers and activations; params: their list of per-layer params. X: (m, n_0); Y:
    (m, n_N) or (m,) labels. With ``allow=None`` the step is applied whatever ok says.
    """
    Z, caches = network.forward(batched_layers, params, X)
    Delta_N = losses.delta_output_rows(output, loss, Z, Y)
    grads, _ = network.backward(batched_layers, params, caches, Delta_N)
    mean_loss = losses.mean_output_loss(output, loss, Z, Y)
    m = Z.shape[0]
    limit = jnp.finfo(Delta_N.dtype).max / 4
    ok = jnp.isfinite(mean_loss)
    for g in grads:
        if g:
            Delta, A = g["W"]
            ok = ok & (max_abs(Delta) < limit) & (gradient_bound(Delta, A) < limit)
    if allow is None:
        # True at run time, but XLA cannot see it: every W^[l] update then waits for ok,
        # that is for every Δ, and runs in place after the recursion has read the old W.
        # With a plain True XLA copies each W first.
        apply = ok | jax.lax.optimization_barrier(jnp.bool_(True))
    else:
        apply = ok & allow
    new = [p and {"W": descend_weights(p["W"], *g["W"], alpha, apply, block_bytes),
                  "b": jnp.where(apply, p["b"] - alpha * (g["b"] / m), p["b"])}
           for p, g in zip(params, grads, strict=True)]
    return new, mean_loss, ok
