"""The hand-written backward pass in the notes' lesson forms, dense network.

With δ^[l] = ∇_{z^[l]} L:

    δ^[N] = ∇_ŷ L(ŷ, y) ∘ (g^[N])'(z^[N])                 (output layer; ŷ - y for
                                                            canonical pairs)
    δ^[l] = (W^[l+1]ᵀ δ^[l+1]) ∘ (g^[l])'(z^[l]),  l = N-1, ..., 1
    ∂L/∂W^[l] = δ^[l] a^[l-1]ᵀ
    ∂L/∂b^[l] = δ^[l]

Gradient descent then *minimises* L (erratum: the notes say the goal is to maximise).

Every form here is ``jaxnn.network.backward``, the one δ recursion, over the dense
layers and activations: per example (``backward``, ``grad_example``), vmapped over the
examples (``grad_vmap``), and in the notes' matrix form with examples as columns,
∂L/∂W^[l] = Δ^[l] A^[l-1]ᵀ / m (``grad_matrix``). Nothing here calls jax.grad, jax.vjp
or jax.jvp: these are the gradients that ``gradcheck`` compares against autodiff and
finite differences. The batched rows form and the in-place descent that training uses
are in ``jaxnn.fast`` (``DenseNetwork.manual_grad`` and ``manual_descent``).
"""

from collections.abc import Callable
from dataclasses import dataclass

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from jaxnn import dense, losses, network
from jaxnn.layers import Activation

Params = dense.Params


@dataclass(frozen=True)
class _TimesGPrime:
    """The "∘ g'(z^[l])" step of the recursion for a given g' (an activation's backward)."""

    g_prime: Callable

    def backward(self, params, z, delta):
        return {}, delta * self.g_prime(z)


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
      ∂L/∂b^[l] = δ^[l]; delta_0 = W^[1]ᵀ δ^[1] = ∂L/∂a^[0] of shape (n_0,).
    """
    layers = [_TimesGPrime(g_prime) if isinstance(layer, Activation) else layer
              for layer in dense.layers(dense.sizes_of(params), "identity")]
    caches = [a_s[0]]
    for z, a in zip(zs[:-1], a_s[1:-1], strict=True):
        caches += [z, a]  # an activation keeps z^[l], the dense layer above it a^[l]
    grads, delta_0 = network.backward(layers, dense.with_activations(params), caches, delta_N)
    return grads[::2], delta_0


def _network(params: Params, hidden: str, output: str, loss: str) -> network.Network:
    sizes = dense.sizes_of(params)
    return network.Network(sizes[:1], dense.layers(sizes, hidden), output, loss)


def grad_example(
    params: Params, x: ArrayLike, y: ArrayLike, hidden: str, output: str, loss: str
) -> tuple[jax.Array, Params]:
    """(L, ∂L/∂params) for one example x: (n_0,), y: (n_N,) or an integer label."""
    dense.check_names(hidden, output)
    dense.check_input(params, x, batch=False)
    L, grads = _network(params, hidden, output, loss).grad_example(
        dense.with_activations(params), jnp.asarray(x), y)
    return L, grads[::2]


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


def grad_matrix(
    params: Params, X: ArrayLike, Y: ArrayLike, hidden: str, output: str, loss: str
) -> tuple[jax.Array, Params]:
    """Batch gradient by the notes' matrix form, examples as columns.

    Δ^[l] = (W^[l+1]ᵀ Δ^[l+1]) ∘ g'(Z^[l]); ∂L/∂W^[l] = Δ^[l] A^[l-1]ᵀ / m and
    ∂L/∂b^[l] = Δ^[l] 1 / m for the mean loss: ``network.backward`` over the layers in
    their column form (``dense.DenseColumns``). X: (m, n_0), transposed to the notes'
    A^[0] of shape (n_0, m). Returns (mean loss, gradient of the mean loss).
    """
    X = jnp.asarray(X)
    Z, caches = network.forward(dense.columns(params, hidden), dense.with_activations(params),
                                X.T)
    Delta_N = losses.delta_output_rows(output, loss, Z.T, Y).T
    grads, _ = network.backward(dense.columns(params, hidden), dense.with_activations(params),
                                caches, Delta_N)
    m = X.shape[0]
    return (losses.mean_output_loss(output, loss, Z.T, Y),
            jax.tree.map(lambda g: g / m, grads[::2]))


_MOVED = {"delta_t_a": "forms", "BLOCK_BYTES": "descent", "descend_weights": "descent",
          "gradient_bound": "descent"}


def __getattr__(name: str):
    if name in _MOVED:
        import importlib
        import warnings

        warnings.warn(f"jaxnn.backprop.{name} moved to jaxnn.fast.{_MOVED[name]}.{name}",
                      DeprecationWarning, stacklevel=2)
        return getattr(importlib.import_module(f"jaxnn.fast.{_MOVED[name]}"), name)
    raise AttributeError(f"module 'jaxnn.backprop' has no attribute {name!r}")


__all__ = ["backward", "grad_example", "grad_matrix", "grad_vmap"]
