"""The notes' two models, a dense network and a CNN, as constructors of a ``Network``.

``DenseNetwork(sizes, hidden, output, loss_name)`` is Dense -> g -> ... -> Dense, and
``CNN(input_shape, layers, dense, ...)`` is [Conv -> g | pool]* -> flatten -> the dense
part; both are frozen, hashable dataclasses (static arguments of ``jax.jit``) whose
parameters keep the notes' layout: a dense network is a list of
``{"W": (n_l, n_{l-1}), "b": (n_l,)}``, a CNN ``{"conv": [{"W": HWIO, "b": (C_out,)}],
"dense": [...]}``. Their methods (``jaxnn.network.Model``) are those every model offers;
``Model`` below states what ``jaxnn.sgd``, ``jaxnn.gradcheck`` and ``jaxnn.parallel``
need of one.
"""

import functools
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from jaxnn import backprop, checks, dense, fast, initializers, losses
from jaxnn.layers import Activation, AvgPool, Conv, Flatten, MaxPool
from jaxnn.network import Model as _Methods
from jaxnn.network import Network, forward


@runtime_checkable
class Model(Protocol):
    """What training, gradient checking and the device mesh need of a model.

    Hashable (a static argument of ``jit``), with: ``init(key, method, dtype)`` ->
    params; ``loss(params, X, Y)`` -> mean loss (``jax.grad`` of it is the autodiff
    gradient); ``manual_grad(params, X, Y)`` -> (mean loss, gradient) by the δ
    recursion; ``accuracy(params, X, Y)`` -> fraction or None; ``check(params, X, Y)``
    raising ValueError/TypeError. Optional: ``kink_pattern(params, X)`` (finite
    differences), ``descends_in_place`` and ``manual_descent`` (``jaxnn.sgd``).
    """

    def init(self, key: jax.Array, method: str = ..., dtype: Any = ...) -> Any: ...
    def loss(self, params, X: ArrayLike, Y: ArrayLike) -> jax.Array: ...
    def manual_grad(self, params, X: ArrayLike, Y: ArrayLike) -> tuple[jax.Array, Any]: ...
    def accuracy(self, params, X: ArrayLike, Y: ArrayLike) -> jax.Array | None: ...
    def check(self, params, X: ArrayLike, Y: ArrayLike | None = None) -> None: ...


GRAD_FORMS = ("rows", "matrix", "vmap")


class Batched(_Methods):
    """Methods that run the network's loops over ``jaxnn.fast``'s batched layer forms."""

    def fast_options(self) -> dict:
        return {}

    def batched_layers(self) -> tuple:
        return tuple(fast.batched(layer, **self.fast_options())
                     for layer in self.network.layers)

    def forward_logits(self, params, X):
        return forward(self.batched_layers(), self.to_layers(params), X)[0]

    def batch_grad(self, params, X, Y):
        net = self.network
        loss, grads = fast.manual_grad(self.batched_layers(), net.output, net.loss_name,
                                       self.to_layers(params), X, Y)
        return loss, self.from_layers(grads)


@dataclass(frozen=True)
class DenseNetwork(Batched):
    """An N-layer dense network: sizes (n_0, ..., n_N), one hidden g, an output g^[N], a loss.

    ``grad_form`` picks the manual batch gradient: "rows" (``jaxnn.fast``: the batch as
    rows through the batched layers, the default, used for training), "matrix" (Δ Aᵀ / m
    with examples as columns, exactly as the notes write it, ``backprop.grad_matrix``) or
    "vmap" (the per-example recursion, vmapped: ``Network.manual_grad``).
    """

    sizes: tuple[int, ...]
    hidden: str = "relu"
    output: str = "identity"
    loss_name: str = "squared_error"
    grad_form: str = "rows"

    def __post_init__(self):
        object.__setattr__(self, "sizes", dense.check_sizes(self.sizes))
        dense.check_names(self.hidden, "identity")
        losses.check_pair(self.output, self.loss_name)
        if self.grad_form not in GRAD_FORMS:
            raise ValueError(f"grad_form must be one of {GRAD_FORMS}, got {self.grad_form!r}")

    @functools.cached_property
    def network(self) -> Network:
        return Network(self.sizes[:1], dense.layers(self.sizes, self.hidden), self.output,
                       self.loss_name)

    def to_layers(self, params) -> list:
        return dense.with_activations(params)

    def from_layers(self, layer_params: list):
        return list(layer_params[::2])

    def init(self, key: jax.Array, method: str = "he", dtype=jnp.float32, **kwargs):
        """Parameters for this network (see ``dense.init``)."""
        return dense.init(key, self.sizes, method, dtype, **kwargs)

    def batch_grad(self, params, X, Y):
        if self.grad_form == "matrix":
            return backprop.grad_matrix(params, X, Y, self.hidden, self.output, self.loss_name)
        if self.grad_form == "vmap":
            return _Methods.batch_grad(self, params, X, Y)
        return super().batch_grad(params, X, Y)

    @property
    def descends_in_place(self) -> bool:
        """Whether ``jaxnn.sgd`` trains with ``manual_descent``: in the rows form (default)."""
        return self.grad_form == "rows"

    def manual_descent(self, params, X: ArrayLike, Y: ArrayLike, alpha, allow=None,
                       block_bytes: int = fast.descent.BLOCK_BYTES):
        """(new params, mean loss, ok): θ <- θ - α ∂L/∂θ by ``jaxnn.fast.descent``.

        The explicit update with the manual gradient, each W^[l] updated block by block
        so that no ∂L/∂W^[l] is held whole; applied where ok and allow (None: always).
        """
        self.check(params, X, Y)
        batched = tuple(fast.batched(layer, factors=True) for layer in self.network.layers)
        new, loss, ok = fast.descent.descend(batched, self.output, self.loss_name,
                                             self.to_layers(params), X, Y, alpha, allow,
                                             block_bytes)
        return self.from_layers(new), loss, ok


def Pool(window, stride=None, kind: str = "max_pool"):  # noqa: N802 - reads as a layer name
    """A max (``kind="max_pool"``) or average (``"avg_pool"``) pooling layer."""
    if kind not in ("max_pool", "avg_pool"):
        raise ValueError(f"pool kind must be 'max_pool' or 'avg_pool', got {kind!r}")
    return (MaxPool if kind == "max_pool" else AvgPool)(window, stride)


@dataclass(frozen=True)
class CNN(Batched):
    """Convolutional network: input (H, W, C), feature layers, dense sizes, activations, loss.

    Args:
      input_shape: (H, W, C) of one image.
      layers: a sequence of ``Conv``, ``MaxPool`` and ``AvgPool``.
      dense: sizes of the dense layers after flattening, the last being n_N.
      hidden: g after every convolution and every hidden dense layer.
      output, loss_name: as for ``DenseNetwork``.
      conv_method: "im2col" (patches and one matrix product, the default) or "lax"
        (``lax.conv_general_dilated``): the batched convolutions of ``jaxnn.fast.conv``
        that the forward, ``jax.grad`` and the hand-written backward run on.
    """

    input_shape: tuple[int, int, int]
    layers: tuple
    dense: tuple[int, ...]
    hidden: str = "relu"
    output: str = "softmax"
    loss_name: str = "softmax"
    conv_method: str = "im2col"

    def __post_init__(self):
        object.__setattr__(self, "input_shape",
                           checks.shape(self.input_shape, "input_shape (H, W, C)", 3))
        object.__setattr__(self, "layers", tuple(self.layers))
        object.__setattr__(self, "dense", tuple(self.dense))
        for spec in self.layers:
            if not isinstance(spec, Conv | MaxPool | AvgPool):
                raise TypeError(f"layers must be Conv or Pool (MaxPool, AvgPool), got {spec!r}")
        dense.check_sizes((1,) + self.dense)
        dense.check_names(self.hidden, self.output)
        losses.check_pair(self.output, self.loss_name)
        if self.conv_method not in ("lax", "im2col"):
            raise ValueError(f"conv_method must be 'lax' or 'im2col', got {self.conv_method!r}")
        self.feature_shapes()  # validates kernel/window sizes against the image

    def feature_layers(self) -> tuple:
        """Conv -> g for each convolution, the pooling layers as they are."""
        out = []
        for spec in self.layers:
            out += [spec, Activation(self.hidden)] if spec.kind == "conv" else [spec]
        return tuple(out)

    @functools.cached_property
    def network(self) -> Network:
        return Network(self.input_shape, self.feature_layers() + (Flatten(),)
                       + dense.layers(self.sizes, self.hidden), self.output, self.loss_name)

    def fast_options(self) -> dict:
        return {"conv_method": self.conv_method}

    def feature_shapes(self) -> list[tuple[int, int, int]]:
        """(H, W, C) after each feature layer, starting with the input; validates the specs."""
        return list(self._feature_shapes)

    @functools.cached_property
    def _feature_shapes(self) -> tuple[tuple[int, int, int], ...]:
        # shape inference once per network: check() reads it on every eager call
        shapes = [self.input_shape]
        for spec in self.layers:
            out = spec.geometry(shapes[-1])[1] if spec.kind == "conv" else spec.output(shapes[-1])
            shapes.append(out + ((spec.filters,) if spec.kind == "conv" else (shapes[-1][2],)))
        return tuple(shapes)

    @property
    def sizes(self) -> tuple[int, ...]:
        """Sizes of the dense part, (n_0 = H·W·C of the last feature map, ..., n_N)."""
        return (int(np.prod(self.feature_shapes()[-1])),) + self.dense

    def to_layers(self, params) -> list:
        convs, out = iter(params["conv"]), []
        for spec in self.layers:
            out += [next(convs), {}] if spec.kind == "conv" else [{}]
        return out + [{}] + dense.with_activations(params["dense"])

    def from_layers(self, layer_params: list):
        n = len(self.feature_layers())
        convs = [p for spec, p in zip(self.feature_layers(), layer_params[:n], strict=True)
                 if spec.kind == "conv"]
        return {"conv": convs, "dense": list(layer_params[n + 1::2])}

    def init(self, key: jax.Array, method: str = "he", dtype=jnp.float32, **kwargs):
        """Parameters: conv kernels HWIO and dense layers, drawn by ``method``; biases 0."""
        checks.key(key)
        initializers.get(method)
        k_conv, k_dense = jax.random.split(key)
        shapes = self.feature_shapes()
        convs = [(spec, shape) for spec, shape in zip(self.layers, shapes, strict=False)
                 if spec.kind == "conv"]
        keys = jax.random.split(k_conv, max(len(convs), 1))
        conv_params = [spec.init(k, shape, method, dtype, **kwargs)[1]
                       for k, (spec, shape) in zip(keys, convs, strict=False)]
        return {"conv": conv_params,
                "dense": dense.init(k_dense, self.sizes, method, dtype, **kwargs)}

    def features(self, params, X: ArrayLike, keep: bool = False):
        """The feature layers on a batch X: (m, H, W, C).

        Returns the last feature map (m, H', W', C'), and with keep=True also
        [(a_in, z) for a conv, (a_in, None) for a pool], z the pre-activation.
        """
        self.check(params, X)
        n = len(self.feature_layers())
        batched = self.batched_layers()[:n]
        a, caches = forward(batched, self.to_layers(params)[:n], jnp.asarray(X))
        cache, i = [], 0
        for spec in self.layers:
            if spec.kind == "conv":
                cache.append((caches[i], caches[i + 1]))
                i += 2
            else:
                cache.append((caches[i], None))
                i += 1
        return (a, cache) if keep else a

    def logits_example(self, params, x: ArrayLike) -> jax.Array:
        """z^[N] of one image x: (H, W, C), the unit that ``jax.vmap`` batches."""
        return self.network.logits_example(self.to_layers(params), jnp.asarray(x))


__all__ = ["CNN", "AvgPool", "Conv", "DenseNetwork", "MaxPool", "Model", "Network", "Pool"]
