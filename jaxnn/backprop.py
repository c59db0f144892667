"""The hand-written backward pass: the notes' δ recursion.

With δ^[l] = ∇_{z^[l]} L:

    δ^[N] = ∇_ŷ L(ŷ, y) ∘ (g^[N])'(z^[N])                 (output layer; ŷ - y for
                                                            canonical pairs)
    δ^[l] = (W^[l+1]ᵀ δ^[l+1]) ∘ (g^[l])'(z^[l]),  l = N-1, ..., 1
    ∂L/∂W^[l] = δ^[l] a^[l-1]ᵀ
    ∂L/∂b^[l] = δ^[l]

Gradient descent then *minimises* L (erratum: the notes say the goal is to maximise).

Convolutional networks (``cnn_grad``) run the same recursion through their dense part,
then carry ∂L/∂a^[0] back through flatten, pooling, g and each convolution with the
hand-written layer backward passes of ``jaxnn.conv``.

Nothing here calls jax.grad, jax.vjp or jax.jvp: these are the gradients that
``gradcheck`` compares against autodiff and finite differences.
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from jaxnn import activations, conv, dense, losses

Params = dense.Params


def backward(
    params: Params,
    zs: list[jax.Array],
    a_s: list[jax.Array],
    delta_N: jax.Array,
    g_prime: Callable[[jax.Array], jax.Array],
) -> tuple[Params, jax.Array]:
    """The δ recursion for one example.

    Args:
      params: N layers {"W": (n_l, n_{l-1}), "b": (n_l,)}.
      zs, a_s: the cache of ``dense.forward_cache`` (z^[1..N], a^[0..N]).
      delta_N: δ^[N] of shape (n_N,).
      g_prime: the hidden layers' g'.
    Returns:
      (grads, delta_0): grads has the params' structure, ∂L/∂W^[l] = δ^[l] a^[l-1]ᵀ and
      ∂L/∂b^[l] = δ^[l]; delta_0 = W^[1]ᵀ δ^[1] = ∂L/∂a^[0] of shape (n_0,), the
      gradient a layer below the network (a flattened convolution, say) continues with.
    """
    N = len(params)
    grads: Params = [None] * N
    delta = delta_N
    for l in range(N, 0, -1):
        grads[l - 1] = {"W": jnp.outer(delta, a_s[l - 1]), "b": delta}
        back = params[l - 1]["W"].T @ delta
        if l > 1:
            delta = back * g_prime(zs[l - 2])
    return grads, back


def grad_example(
    params: Params, x: ArrayLike, y: ArrayLike, hidden: str, output: str, loss: str
) -> tuple[jax.Array, Params]:
    """(L, ∂L/∂params) for one example x: (n_0,), y: (n_N,) or an integer label."""
    zs, a_s = dense.forward_cache(params, x, hidden, output)
    delta_N = losses.delta_output(output, loss, zs[-1], y)
    grads, _ = backward(params, zs, a_s, delta_N, activations.get(hidden).g_prime)
    return losses.output_loss(output, loss, zs[-1], y), grads


def grad_vmap(
    params: Params, X: ArrayLike, Y: ArrayLike, hidden: str, output: str, loss: str
) -> tuple[jax.Array, Params]:
    """Batch gradient as ``jax.vmap`` of ``grad_example`` and a mean over examples.

    X: (m, n_0); Y: (m, n_N) or (m,) integer labels. Returns (mean loss, mean gradient).
    """
    per_loss, per_grads = jax.vmap(grad_example, in_axes=(None, 0, 0, None, None, None))(
        params, X, Y, hidden, output, loss
    )
    return jnp.mean(per_loss), jax.tree.map(lambda g: jnp.mean(g, axis=0), per_grads)


def backward_matrix(
    params: Params,
    Zs: list[jax.Array],
    As: list[jax.Array],
    Delta_N: jax.Array,
    g_prime: Callable[[jax.Array], jax.Array],
) -> tuple[Params, jax.Array]:
    """The δ recursion in the notes' matrix form, examples as columns.

    Δ^[l] = (W^[l+1]ᵀ Δ^[l+1]) ∘ g'(Z^[l]); for the mean loss over m examples,
    ∂L/∂W^[l] = Δ^[l] A^[l-1]ᵀ / m and ∂L/∂b^[l] = Δ^[l] 1 / m.

    Args:
      Zs, As: the cache of ``dense.forward_matrix_cache``, each (n_l, m).
      Delta_N: δ^[N] of every example as columns, (n_N, m).
    Returns:
      (grads of the mean loss, Delta_0) with Delta_0 = W^[1]ᵀ Δ^[1] of shape (n_0, m):
      column i is ∂L_i/∂a^[0](i) (per example, not divided by m).
    """
    N = len(params)
    m = Delta_N.shape[1]
    grads: Params = [None] * N
    Delta = Delta_N
    for l in range(N, 0, -1):
        grads[l - 1] = {"W": Delta @ As[l - 1].T / m, "b": jnp.sum(Delta, axis=1) / m}
        back = params[l - 1]["W"].T @ Delta
        if l > 1:
            Delta = back * g_prime(Zs[l - 2])
    return grads, back


def grad_matrix(
    params: Params, X: ArrayLike, Y: ArrayLike, hidden: str, output: str, loss: str
) -> tuple[jax.Array, Params]:
    """Batch gradient by the matrix form. X: (m, n_0) (transposed to the notes' (n_0, m)).

    Returns (mean loss, gradient of the mean loss) with the params' structure.
    """
    Zs, As = dense.forward_matrix_cache(params, jnp.asarray(X).T, hidden, output)
    Z_N = Zs[-1].T
    Delta_N = losses.delta_output_rows(output, loss, Z_N, Y)
    grads, _ = backward_matrix(params, Zs, As, Delta_N.T, activations.get(hidden).g_prime)
    return losses.mean_output_loss(output, loss, Z_N, Y), grads


def forward_rows_cache(
    params: Params, X: ArrayLike, hidden: str, output: str
) -> tuple[list[jax.Array], list[jax.Array]]:
    """The matrix form with examples as rows: Z^[l]ᵀ = A^[l-1]ᵀ W^[l]ᵀ + b^[l]ᵀ.

    The notes' Z^[l] = W^[l] A^[l-1] + b^[l] transposed, so that the batch X: (m, n_0)
    is A^[0]ᵀ as it comes. Returns (Zs, As) with Zs[l-1] = Z^[l]ᵀ and As[l] = A^[l]ᵀ,
    each (m, n_l); the softmax output normalises each row.
    """
    dense.check_names(hidden, output)
    dense.check_input(params, X)
    g = activations.get(hidden).g
    A = jnp.asarray(X)
    Zs, As = [], [A]
    for l, p in enumerate(params, start=1):
        Z = A @ p["W"].T + p["b"][None, :]
        if l < len(params):
            A = g(Z)
        elif output == "softmax":
            A = activations.softmax(Z, axis=1)
        else:
            A = activations.get(output).g(Z)
        Zs.append(Z)
        As.append(A)
    return Zs, As


def delta_t_a(Delta: jax.Array, A: jax.Array) -> jax.Array:
    """Σ_i δ(i) a(i)ᵀ = Δᵀ A for Δ: (m, n_l) and A: (m, n_{l-1}); returns (n_l, n_{l-1}).

    Computed from a materialised Δᵀ. XLA's CPU backend hands a product to YNNPACK when
    its left operand is read row by row, and runs Δᵀ A, which reads Δ down its columns,
    on Eigen: a scanned epoch of the 64-128-10 network (batch 32) takes 0.8x the time
    with the copy. The barriers stop XLA from folding the transpose back into the
    product. The copy is m·n_l numbers against the product's m·n_l·n_{l-1} multiply-adds.
    """
    Delta_T = jax.lax.optimization_barrier(Delta.T)
    return jax.lax.optimization_barrier(Delta_T @ A)


def deltas_rows(
    params: Params,
    Zs: list[jax.Array],
    Delta_N: jax.Array,
    g_prime: Callable[[jax.Array], jax.Array],
) -> tuple[list[jax.Array], jax.Array]:
    """The δ recursion alone, examples as rows: Δ^[l]ᵀ = (Δ^[l+1]ᵀ W^[l+1]) ∘ g'(Z^[l]ᵀ).

    Args:
      Zs: Z^[l]ᵀ of ``forward_rows_cache``, each (m, n_l).
      Delta_N: δ^[N] of every example as rows, (m, n_N).
    Returns:
      (Deltas, Delta_0): Deltas[l-1] = Δ^[l]ᵀ of shape (m, n_l) for l = 1..N, and
      Delta_0 = Δ^[1]ᵀ W^[1] of shape (m, n_0), row i being ∂L_i/∂a^[0](i).
    """
    N = len(params)
    Deltas: list[jax.Array] = [None] * N
    Delta = Delta_N
    for l in range(N, 0, -1):
        Deltas[l - 1] = Delta
        back = Delta @ params[l - 1]["W"]
        if l > 1:
            Delta = back * g_prime(Zs[l - 2])
    return Deltas, back


def backward_rows(
    params: Params,
    Zs: list[jax.Array],
    As: list[jax.Array],
    Delta_N: jax.Array,
    g_prime: Callable[[jax.Array], jax.Array],
) -> tuple[Params, jax.Array]:
    """``backward_matrix`` with examples as rows: every matrix of the recursion transposed.

    Δ^[l]ᵀ = (Δ^[l+1]ᵀ W^[l+1]) ∘ g'(Z^[l]ᵀ), ∂L/∂W^[l] = (Δ^[l]ᵀ)ᵀ A^[l-1]ᵀ / m and
    ∂L/∂b^[l] = 1ᵀ Δ^[l]ᵀ / m: the same numbers as the notes' column form. This is the
    form training uses. With W^[l] stored (n_l, n_{l-1}) row-major, the column form's
    W^[l+1]ᵀ Δ^[l+1] multiplies a transposed weight matrix, which XLA's CPU backend runs
    on a slower path than Δ^[l+1]ᵀ W^[l+1] (about 10% of a 4096-wide step); in rows the
    program has the matrix products, layouts and transposes of ``jax.grad``'s.

    Args:
      Zs, As: the cache of ``forward_rows_cache``, each (m, n_l).
      Delta_N: δ^[N] of every example as rows, (m, n_N).
    Returns:
      (grads of the mean loss, Delta_0) with Delta_0 = Δ^[1]ᵀ W^[1] of shape (m, n_0):
      row i is ∂L_i/∂a^[0](i) (per example, not divided by m).
    """
    m = Delta_N.shape[0]
    Deltas, Delta_0 = deltas_rows(params, Zs, Delta_N, g_prime)
    grads = [{"W": delta_t_a(Delta, A) / m, "b": jnp.sum(Delta, axis=0) / m}
             for Delta, A in zip(Deltas, As[:-1], strict=True)]
    return grads, Delta_0


def grad_rows(
    params: Params, X: ArrayLike, Y: ArrayLike, hidden: str, output: str, loss: str
) -> tuple[jax.Array, Params]:
    """Batch gradient by the matrix form with examples as rows (``backward_rows``).

    X: (m, n_0); Y: (m, n_N) or (m,) labels. Returns (mean loss, gradient of the mean
    loss), equal to ``grad_matrix``'s up to the order of floating-point additions.
    """
    Zs, As = forward_rows_cache(params, X, hidden, output)
    Delta_N = losses.delta_output_rows(output, loss, Zs[-1], Y)
    grads, _ = backward_rows(params, Zs, As, Delta_N, activations.get(hidden).g_prime)
    return losses.mean_output_loss(output, loss, Zs[-1], Y), grads


BLOCK_BYTES = 8 * 2**20


def max_abs(x: ArrayLike) -> jax.Array:
    """max |x| (0 for an empty x), ∞ when x holds a NaN.

    The NaN is looked for apart: XLA's CPU backend drops NaN from a max over more than a
    few thousand numbers (a (96, 2049) array with one NaN: ``jnp.max`` gives 0.0).
    Mapping NaN to ∞ inside the max instead made the mlp_wide epoch hold one more
    (512, 4096) array.
    """
    x = jnp.asarray(x)
    return jnp.where(jnp.any(jnp.isnan(x)), jnp.inf, jnp.max(jnp.abs(x), initial=0.0))


def gradient_bound(Delta: jax.Array, A: jax.Array) -> jax.Array:
    """A bound of every |(Δᵀ A)_jk| = |Σ_i δ_ij a_ik|: m · max |δ_ij| · max |a_ik|.

    Delta: (m, n_l); A: (m, n_{l-1}). Returns a scalar, ∞ or NaN (∞ · 0) when Δ or A
    holds a NaN or ∞, so ``bound < limit`` is False for every non-finite input.
    """
    return Delta.shape[0] * max_abs(Delta) * max_abs(A)


def descend_weights(W: jax.Array, Delta: jax.Array, A: jax.Array, alpha, apply: jax.Array,
                    block_bytes: int = BLOCK_BYTES) -> jax.Array:
    """W^[l] - α ∂L/∂W^[l], ∂L/∂W^[l] = Δ^[l] A^[l-1]ᵀ / m, never holding ∂L/∂W^[l] whole.

    Columns j..j+r of ∂L/∂W^[l] are Δᵀ A[:, j:j+r] / m: each block of r columns is
    computed, subtracted and written back into W before the next one (a ``fori_loop`` of
    ``dynamic_update_slice``, which XLA runs in W's own buffer when W is donated), so a
    step holds n_l·r numbers of gradient instead of n_l·n_{l-1}. r is the largest number
    of columns within ``block_bytes``. Blocks of columns, not rows: ``jaxnn.parallel``
    may split W's rows over devices, and a block of rows then made XLA gather all of W
    on every device (a (1024, 1025) float64 layer on a model axis of 2: 33.7 instead of
    8.5 MB of temporaries); on one device both took the same time. Where ``apply`` is
    False, W comes back as it was.

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


def descend_rows(
    params: Params, X: ArrayLike, Y: ArrayLike, alpha, hidden: str, output: str, loss: str,
    allow: jax.Array | None = None, block_bytes: int = BLOCK_BYTES,
) -> tuple[Params, jax.Array, jax.Array]:
    """One step of gradient descent, θ <- θ - α ∂L/∂θ, by the δ recursion in rows.

    The numbers of ``update(params, grad_rows(...)[1], alpha)`` up to rounding, in less
    memory: every Δ^[l] is found first (the recursion reads the old W^[l+1]), then each
    W^[l] is updated in place, ``block_bytes`` of ∂L/∂W^[l] at a time
    (``descend_weights``): a 4096×4096 layer's 64 MiB gradient is never held whole.

    The step is applied where ``ok`` and ``allow``. ok says that the loss and every
    gradient are certainly finite: the loss is, every |δ| is below a quarter of the
    dtype's largest number, and so is every ``gradient_bound`` of Δ^[l]ᵀ A^[l-1] (a
    sum of m products, its rounding under m·ε relative for m < 2^20, cannot then
    overflow). NaN or ∞ in any Δ^[l] or A^[l] fails it; so may, rarely, a finite
    gradient within a factor m·max|δ|·max|a| / max|Δᵀ A| of overflowing, which a check
    of the gradient itself would pass. With ``allow=None`` the step is applied whatever
    ok says.

    X: (m, n_0); Y: (m, n_N) or (m,) labels. Returns (new params, mean loss, ok).
    """
    Zs, As = forward_rows_cache(params, X, hidden, output)
    m = Zs[-1].shape[0]
    Delta_N = losses.delta_output_rows(output, loss, Zs[-1], Y)
    Deltas, _ = deltas_rows(params, Zs, Delta_N, activations.get(hidden).g_prime)
    mean_loss = losses.mean_output_loss(output, loss, Zs[-1], Y)
    limit = jnp.finfo(Delta_N.dtype).max / 4
    ok = jnp.isfinite(mean_loss)
    for Delta, A in zip(Deltas, As[:-1], strict=True):
        ok = ok & (max_abs(Delta) < limit) & (gradient_bound(Delta, A) < limit)
    if allow is None:
        # True at run time, but XLA cannot see it: every W^[l] update then waits for ok,
        # that is for every Δ, and runs in place after the recursion has read the old
        # W^[l]. With a plain True (or a barrier on the Δ's) XLA copies each W first
        # (64 MiB for a 4096×4096 layer).
        apply = ok | jax.lax.optimization_barrier(jnp.bool_(True))
    else:
        apply = ok & allow
    new = [{"W": descend_weights(p["W"], Delta, A, alpha, apply, block_bytes),
            "b": jnp.where(apply, p["b"] - alpha * (jnp.sum(Delta, axis=0) / m), p["b"])}
           for p, Delta, A in zip(params, Deltas, As[:-1], strict=True)]
    return new, mean_loss, ok


def cnn_grad(model, params, X: ArrayLike, Y: ArrayLike) -> tuple[jax.Array, dict]:
    """(mean loss, gradient) of a ``jaxnn.cnn.CNN`` by the hand-written backward pass.

    The dense part uses ``backward_rows`` (the δ recursion above, examples as rows); its
    Δ^[0], the gradient with respect to the flattened features, goes back through

        flatten:  reshape to the feature map's shape
        pooling:  max -> to the first argmax of each window; average -> spread evenly
        g:        δ_z = δ_a ∘ g'(z)
        conv:     ∂L/∂θ = x̃ ⋆ δ_z,  ∂L/∂b = Σ δ_z,  ∂L/∂x = δ_z ⋆_full flip(θ)

    X: (m, H, W, C); Y: (m, n_N) or (m,) labels. Conv gradients from ``jaxnn.conv`` are
    sums over the batch and are divided by m here, matching the mean loss.
    """
    g_prime = activations.get(model.hidden).g_prime
    a, cache = model.features(params, X, keep=True)
    m = a.shape[0]
    Zs, As = forward_rows_cache(params["dense"], conv.flatten(a), model.hidden, model.output)
    Delta_N = losses.delta_output_rows(model.output, model.loss_name, Zs[-1], Y)
    dense_grads, Delta_0 = backward_rows(params["dense"], Zs, As, Delta_N, g_prime)
    delta = conv.flatten_backward(a.shape, Delta_0)
    conv_grads = []
    conv_params = iter(reversed(params["conv"]))
    for spec, (a_in, z) in zip(reversed(model.layers), reversed(cache), strict=True):
        if spec.kind == "max_pool":
            delta = conv.max_pool_backward(a_in, delta, spec.window, spec.stride)
        elif spec.kind == "avg_pool":
            delta = conv.avg_pool_backward(a_in.shape, delta, spec.window, spec.stride)
        else:
            p = next(conv_params)
            delta_z = delta * g_prime(z)
            dW, db, delta = conv.conv2d_backward(a_in, p["W"], delta_z, spec.stride,
                                                 spec.padding, model.conv_method)
            conv_grads.append({"W": dW / m, "b": db / m})
    mean_loss = losses.mean_output_loss(model.output, model.loss_name, Zs[-1], Y)
    return mean_loss, {"conv": conv_grads[::-1], "dense": dense_grads}
