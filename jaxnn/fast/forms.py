"""Batched forms of the layers: drop-in replacements of ``jax.vmap`` of a layer.

A batched layer has the layer protocol's ``forward(params, A) -> (A', cache)`` and
``backward(params, cache, Δ) -> (grads, Δ_prev)``, on a minibatch with examples along
the leading axis, and with the parameter gradients *summed* over the examples. Run
through ``jaxnn.network``'s forward loop and δ recursion they give the batch gradient
in a few large operations instead of m small ones. Each form is tested equal to the
vmapped per-example layer (float64, < 1e-12).

- dense: the notes' matrix form with examples as rows, Z = A Wᵀ + b, Δ_prev = Δ W and
  ∂L/∂W = Δᵀ A (``delta_t_a``);
- convolution and pooling: ``jaxnn.fast.conv`` (im2col or ``lax.conv``);
- activation: the layer itself (g and g' are elementwise);
- flatten: a reshape that keeps the batch axis;
- a residual block: the block of the batched inner layers;
- any other kind: ``Vmapped``, jax.vmap of its per-example functions.
"""

from dataclasses import dataclass

import jax
import jax.numpy as jnp

from jaxnn import layers
from jaxnn.fast import conv


@dataclass(frozen=True)
class Vmapped:
    """Any layer on a batch: ``jax.vmap`` of its forward and backward, grads summed."""

    layer: object

    def forward(self, params, A):
        return jax.vmap(self.layer.forward, in_axes=(None, 0))(params, A)

    def backward(self, params, cache, Delta):
        grads, Delta_prev = jax.vmap(self.layer.backward, in_axes=(None, 0, 0))(
            params, cache, Delta)
        return jax.tree.map(lambda g: jnp.sum(g, axis=0), grads), Delta_prev


def delta_t_a(Delta: jax.Array, A: jax.Array) -> jax.Array:
    """Σ_i δ(i) a(i)ᵀ = Δᵀ A for Δ: (m, n_l) and A: (m, n_{l-1}); returns (n_l, n_{l-1}).

    From a materialised Δᵀ: XLA's CPU backend runs a product on its faster kernels when
    the left operand is read row by row; the barriers keep XLA from folding the
    transpose back into the product.
    """
    Delta_T = jax.lax.optimization_barrier(Delta.T)
    return jax.lax.optimization_barrier(Delta_T @ A)


@dataclass(frozen=True)
class DenseRows:
    """z = W a + b for a batch as rows: Z = A Wᵀ + b; ``factors`` keeps ∂L/∂W as (Δ, A)."""

    layer: layers.Dense
    factors: bool = False

    def forward(self, params, A):
        return A @ params["W"].T + params["b"][None, :], A

    def backward(self, params, A, Delta):
        dW = (Delta, A) if self.factors else delta_t_a(Delta, A)
        return {"W": dW, "b": jnp.sum(Delta, axis=0)}, Delta @ params["W"]


@dataclass(frozen=True)
class FlattenRows:
    """(m, H, W, C) -> (m, H·W·C) and back."""

    layer: layers.Flatten

    def forward(self, params, A):
        return A.reshape(A.shape[0], -1), A

    def backward(self, params, A, Delta):
        return {}, Delta.reshape(A.shape)


@dataclass(frozen=True)
class ConvBatch:
    """The convolution on NHWC batches by ``jaxnn.fast.conv`` (``method``: im2col or lax)."""

    layer: layers.Conv
    method: str = "im2col"

    def forward(self, params, A):
        c = self.layer
        return conv.conv2d(A, params["W"], params["b"], c.stride, c.padding, self.method), A

    def backward(self, params, A, Delta):
        c = self.layer
        dW, db, dA = conv.conv2d_backward(A, params["W"], Delta, c.stride, c.padding,
                                          self.method)
        return {"W": dW, "b": db}, dA


@dataclass(frozen=True)
class PoolBatch:
    """Max or average pooling on NHWC batches by ``jaxnn.fast.conv``."""

    layer: object

    def forward(self, params, A):
        pool = conv.max_pool if self.layer.kind == "max_pool" else conv.avg_pool
        return pool(A, self.layer.window, self.layer.stride), A

    def backward(self, params, A, Delta):
        window, stride = self.layer.window, self.layer.stride
        if self.layer.kind == "max_pool":
            return {}, conv.max_pool_backward(A, Delta, window, stride)
        return {}, conv.avg_pool_backward(A.shape, Delta, window, stride)


def batched(layer, conv_method: str = "im2col", factors: bool = False):
    """The batched form of ``layer`` (``Vmapped`` for a kind without a faster one)."""
    if isinstance(layer, layers.Dense):
        return DenseRows(layer, factors)
    if isinstance(layer, layers.Activation):
        return layer
    if isinstance(layer, layers.Flatten):
        return FlattenRows(layer)
    if isinstance(layer, layers.Conv):
        return ConvBatch(layer, conv_method)
    if isinstance(layer, layers.MaxPool | layers.AvgPool):
        return PoolBatch(layer)
    if isinstance(layer, layers.Residual):
        return layers.Residual(tuple(batched(inner, conv_method, factors)
                                     for inner in layer.layers))
    return Vmapped(layer)
