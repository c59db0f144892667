"""A convolutional network as static configuration plus a parameter pytree.

The notes' CNN: a colour image is an H × W × 3 volume; a filter θ slides across it,
a = Σ_ij θ_ij x_ij; several filters give several feature maps; in the end the volume
is flattened (64 × 64 × 3 -> 12,288) and fed to dense layers. Here the network is

    [Conv -> g | Pool]* -> flatten -> dense layers -> g^[N]

described by a frozen ``CNN`` (hashable, so a static argument of ``jax.jit``) with
parameters ``{"conv": [{"W": (kh, kw, C_in, C_out), "b": (C_out,)}, ...],
"dense": [{"W": (n_l, n_{l-1}), "b": (n_l,)}, ...]}``. The dense part is the dense
network of ``jaxnn.dense`` unchanged, and the hand-written backward pass
(``jaxnn.backprop.cnn_grad``) continues its δ recursion into the convolutions.

``CNN`` offers the same methods as ``jaxnn.model.DenseNetwork`` (init, logits,
predict, loss, manual_grad, accuracy, check, kink_pattern), so ``sgd`` and
``gradcheck`` work on it unchanged.
"""

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from jaxnn import activations, backprop, conv, dense, initializers, losses


@dataclass(frozen=True)
class Conv:
    """A convolution layer with ``filters`` kernels of size ``kernel``, then g (the hidden one)."""

    filters: int
    kernel: int | tuple[int, int]
    stride: int | tuple[int, int] = 1
    padding: str | int = "VALID"
    kind: str = "conv"


@dataclass(frozen=True)
class Pool:
    """Max or average pooling over ``window`` with ``stride`` (default: the window)."""

    window: int | tuple[int, int]
    stride: int | tuple[int, int] | None = None
    kind: str = "max_pool"

    def __post_init__(self):
        if self.kind not in ("max_pool", "avg_pool"):
            raise ValueError(f"pool kind must be 'max_pool' or 'avg_pool', got {self.kind!r}")


def MaxPool(window, stride=None) -> Pool:  # noqa: N802 - reads as a layer name
    """Max pooling layer."""
    return Pool(window, stride, "max_pool")


def AvgPool(window, stride=None) -> Pool:  # noqa: N802
    """Average pooling layer."""
    return Pool(window, stride, "avg_pool")


def _pair(k):
    return (k, k) if isinstance(k, int) else tuple(k)


@dataclass(frozen=True)
class CNN:
    """Convolutional network: input (H, W, C), feature layers, dense sizes, activations, loss.

    Args:
      input_shape: (H, W, C) of one image.
      layers: a sequence of ``Conv`` and ``Pool`` (``MaxPool``/``AvgPool``).
      dense: sizes of the dense layers after flattening, the last being n_N.
      hidden: g after every convolution and every hidden dense layer.
      output, loss_name: as for ``DenseNetwork``.
      conv_method: "im2col" (patches and one matrix product, the default) or "lax"
        (``lax.conv_general_dilated``) for the forward and the hand-written backward
        convolutions; ``jax.grad`` differentiates whichever forward is chosen. im2col
        is the default because training runs the step inside ``lax.scan``: there
        XLA's CPU backend runs the convolutions that ``jax.grad`` derives from a lax
        convolution (∂L/∂W, with batch and channel axes swapped) on a generic path, about
        ten times slower per step, while the im2col forward differentiates into matrix
        products. A single step compiled on its own favours "lax" (see
        ``experiments/benchmark.py`` and the README's Performance section).
    """

    input_shape: tuple[int, int, int]
    layers: tuple
    dense: tuple[int, ...]
    hidden: str = "relu"
    output: str = "softmax"
    loss_name: str = "softmax"
    conv_method: str = "im2col"

    def __post_init__(self):
        shape = tuple(self.input_shape)
        if len(shape) != 3 or not all(isinstance(n, int) and n > 0 for n in shape):
            raise ValueError(f"input_shape must be (H, W, C) positive ints, got {shape}")
        object.__setattr__(self, "input_shape", shape)
        object.__setattr__(self, "layers", tuple(self.layers))
        object.__setattr__(self, "dense", tuple(self.dense))
        for spec in self.layers:
            if not isinstance(spec, (Conv, Pool)):
                raise TypeError(f"layers must be Conv or Pool, got {spec!r}")
        dense.check_sizes((1,) + self.dense)
        dense.check_names(self.hidden, self.output)
        losses.check_pair(self.output, self.loss_name)
        if self.conv_method not in ("lax", "im2col"):
            raise ValueError(f"conv_method must be 'lax' or 'im2col', got {self.conv_method!r}")
        self.feature_shapes()  # validates kernel/window sizes against the image

    def feature_shapes(self) -> list[tuple[int, int, int]]:
        """(H, W, C) after each feature layer, starting with the input; validates the specs."""
        shapes = [self.input_shape]
        for spec in self.layers:
            x_shape = (1,) + shapes[-1]
            if spec.kind == "conv":
                kh, kw = _pair(spec.kernel)
                out = conv.conv2d_output_shape(
                    x_shape, (kh, kw, shapes[-1][2], spec.filters), spec.stride, spec.padding)
            else:
                out = conv.pool_output_shape(x_shape, spec.window, spec.stride)
            shapes.append(tuple(out[1:]))
        return shapes

    @property
    def sizes(self) -> tuple[int, ...]:
        """Sizes of the dense part, (n_0 = H·W·C of the last feature map, ..., n_N)."""
        return (int(np.prod(self.feature_shapes()[-1])),) + self.dense

    def init(self, key: jax.Array, method: str = "he", dtype=jnp.float32, **kwargs):
        """Parameters: conv kernels HWIO and dense layers, drawn by ``method``; biases 0."""
        initializers.check_key(key)
        initialize = initializers.get(method)
        k_conv, k_dense = jax.random.split(key)
        shapes = self.feature_shapes()
        convs = [(spec, shapes[i][2]) for i, spec in enumerate(self.layers)
                 if spec.kind == "conv"]
        keys = jax.random.split(k_conv, max(len(convs), 1))
        conv_params = [
            {"W": initialize(k, _pair(spec.kernel) + (c_in, spec.filters), dtype, **kwargs),
             "b": jnp.zeros((spec.filters,), dtype)}
            for k, (spec, c_in) in zip(keys, convs, strict=False)
        ]
        return {"conv": conv_params,
                "dense": dense.init(k_dense, self.sizes, method, dtype, **kwargs)}

    # --- forward ---------------------------------------------------------------------

    def features(self, params, X: ArrayLike, keep: bool = False):
        """The feature layers on a batch X: (m, H, W, C).

        Returns the last feature map (m, H', W', C'), and with keep=True also the cache
        [(a_in, z) for a conv, (a_in, None) for a pool] that backprop needs.
        """
        g = activations.get(self.hidden).g
        a, cache, convs = jnp.asarray(X), [], iter(params["conv"])
        for spec in self.layers:
            a_in = a
            if spec.kind == "conv":
                p = next(convs)
                z = conv.conv2d(a, p["W"], p["b"], spec.stride, spec.padding, self.conv_method)
                a = g(z)
            else:
                z = None
                pool = conv.max_pool if spec.kind == "max_pool" else conv.avg_pool
                a = pool(a, spec.window, spec.stride)
            cache.append((a_in, z))
        return (a, cache) if keep else a

    def logits(self, params, X: ArrayLike) -> jax.Array:
        """Z^[N] of every example. X: (m, H, W, C). Returns (m, n_N)."""
        flat = conv.flatten(self.features(params, X))
        return jax.vmap(dense.logits, in_axes=(None, 0, None))(params["dense"], flat,
                                                               self.hidden)

    def logits_example(self, params, x: ArrayLike) -> jax.Array:
        """z^[N] of one image x: (H, W, C), the unit that ``jax.vmap`` batches."""
        return self.logits(params, jnp.asarray(x)[None])[0]

    def predict(self, params, X: ArrayLike) -> jax.Array:
        """Ŷ = g^[N](Z^[N]). X: (m, H, W, C). Returns (m, n_N)."""
        return activations.get(self.output).g(self.logits(params, X))

    def loss(self, params, X: ArrayLike, Y: ArrayLike) -> jax.Array:
        """Mean loss over the batch from the logits (stable forms); jax.grad's input."""
        return losses.mean_output_loss(self.output, self.loss_name, self.logits(params, X), Y)

    def manual_grad(self, params, X: ArrayLike, Y: ArrayLike):
        """(mean loss, gradient) by the hand-written backward pass (``backprop.cnn_grad``)."""
        return backprop.cnn_grad(self, params, X, Y)

    def accuracy(self, params, X: ArrayLike, Y: ArrayLike):
        """Fraction classified right; None for a regression loss."""
        return losses.accuracy(self.loss_name, self.logits(params, X), Y)

    def kink_pattern(self, params, X: ArrayLike):
        """Signs of every ReLU input and the winners of every max-pool window.

        Finite differences whose two evaluations see different patterns crossed a kink.
        """
        a, cache = self.features(params, X, keep=True)
        pattern = []
        for spec, (a_in, z) in zip(self.layers, cache, strict=True):
            if spec.kind == "conv" and self.hidden == "relu":
                pattern.append(z > 0)
            elif spec.kind == "max_pool":
                ones = jnp.ones(conv.pool_output_shape(a_in.shape, spec.window, spec.stride),
                                a_in.dtype)
                pattern.append(conv.max_pool_backward(a_in, ones, spec.window, spec.stride) != 0)
        if self.hidden == "relu":
            Zs, _ = dense.forward_matrix_cache(params["dense"], conv.flatten(a).T, self.hidden,
                                               self.output)
            pattern += [Z > 0 for Z in Zs[:-1]]
        return tuple(pattern)

    def check(self, params, X: ArrayLike, Y: ArrayLike | None = None) -> None:
        """Raise ValueError/TypeError unless params, X (m, H, W, C) and Y fit this network."""
        if not isinstance(params, dict) or set(params) != {"conv", "dense"}:
            raise ValueError("CNN params must be a dict with keys 'conv' and 'dense'")
        if not hasattr(X, "shape") or jnp.ndim(X) != 4 or tuple(X.shape[1:]) != self.input_shape:
            raise ValueError(
                f"expected images of shape (m, {', '.join(map(str, self.input_shape))}), "
                f"got {getattr(X, 'shape', type(X).__name__)}"
            )
        n_conv = sum(spec.kind == "conv" for spec in self.layers)
        if len(params["conv"]) != n_conv:
            raise ValueError(f"expected {n_conv} conv layers in params, got {len(params['conv'])}")
        shapes = self.feature_shapes()
        convs = [(spec, shapes[i][2]) for i, spec in enumerate(self.layers)
                 if spec.kind == "conv"]
        for l, ((spec, c_in), p) in enumerate(zip(convs, params["conv"], strict=True), 1):
            expected = _pair(spec.kernel) + (c_in, spec.filters)
            if tuple(p["W"].shape) != expected or tuple(p["b"].shape) != (spec.filters,):
                raise ValueError(
                    f"conv layer {l}: expected W {expected} and b ({spec.filters},), got "
                    f"W {tuple(p['W'].shape)} and b {tuple(p['b'].shape)}"
                )
        flat = jax.ShapeDtypeStruct((X.shape[0], self.sizes[0]), X.dtype)
        dense.check_input(params["dense"], flat)
        sizes = (self.sizes[0],) + tuple(p["W"].shape[0] for p in params["dense"])
        if sizes != self.sizes:
            raise ValueError(f"dense params have sizes {sizes}, the network {self.sizes}")
        dtypes = {jnp.result_type(leaf) for leaf in jax.tree.leaves(params)}
        if len(dtypes) != 1:
            raise TypeError(f"mixed parameter dtypes {sorted(map(str, dtypes))}")
        if Y is not None:
            losses.check_targets(self.loss_name, (X.shape[0], self.dense[-1]), Y)
