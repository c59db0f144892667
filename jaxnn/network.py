"""A network: a sequence of layers, an output activation g^[N] and a loss.

The layers take one example x = a^[0] to z^[N] (the last layer is linear); g^[N] and
the loss close the network: ŷ = g^[N](z^[N]), L(ŷ, y). The forward pass and the δ
recursion are one loop each, whatever the layer kinds:

    forward:   a <- layer.forward(params_l, a), keeping each cache,  l = 1, ..., L
    δ^[N] = ∇_z L(g^[N](z), y)          (ŷ - y for canonical pairs: losses.delta_output)
    backward:  (∂L/∂params_l, δ) <- layer.backward(params_l, cache_l, δ),  l = L, ..., 1

With dense layers and activations this is the notes' recursion
δ^[l] = (W^[l+1]ᵀ δ^[l+1]) ∘ g'(z^[l]): the dense layer's backward gives W^[l+1]ᵀ δ^[l+1]
and ∂L/∂W^[l+1] = δ^[l+1] a^[l]ᵀ, the activation's the "∘ g'(z^[l])". Gradient descent
then *minimises* L (erratum: the notes say maximise).

``Network.manual_grad`` is the hand-written gradient of every model; ``jax.grad`` of
``Network.loss`` is the independent autodiff path. Batches take examples along the
leading axis; the reference batch gradient is ``jax.vmap`` of the per-example one and
a mean. ``jaxnn.fast`` runs the same two loops over batched forms of the layers, which
is what ``jaxnn.models``' DenseNetwork and CNN use: the same numbers, tested equal.
"""

import functools
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from jaxnn import activations, checks, initializers, losses
from jaxnn.layers.base import Layer


def forward(layers, params, a):
    """The forward loop: a^[0] -> the last layer's output, keeping every layer's cache."""
    caches = []
    for layer, p in zip(layers, params, strict=True):
        a, cache = layer.forward(p, a)
        caches.append(cache)
    return a, caches


def backward(layers, params, caches, delta):
    """The δ recursion: from δ at the output, each layer's backward, last to first.

    Returns (grads, δ_0): grads[l] = ∂L/∂params[l]; δ_0 = ∂L/∂a^[0].
    """
    grads = [None] * len(layers)
    for l in reversed(range(len(layers))):
        grads[l], delta = layers[l].backward(params[l], caches[l], delta)
    return grads, delta


def init_layers(layers, key, input_shape, method="he", dtype=jnp.float32, **kwargs):
    """Shape inference and parameters: (output shape, [params of each layer])."""
    shape, params = tuple(input_shape), []
    for layer, k in zip(layers, jax.random.split(key, max(len(layers), 1)), strict=False):
        shape, p = layer.init(k, shape, method, dtype, **kwargs)
        params.append(p)
    return shape, params


class Model:
    """The public methods of every model, validated once and compiled once per shape.

    A subclass provides ``network`` (a ``Network``), ``to_layers`` / ``from_layers``
    (its parameter layout to the network's list of per-layer params and back), ``init``
    and ``check``; ``forward_logits`` and ``batch_grad`` may run faster forms of the same
    equations (``jaxnn.models``). Each public method checks its arguments (shapes and
    dtypes, label values when concrete), then calls a ``jax.jit``-compiled core with the
    model static, so an eager call compiles once per shape and a call under an outer
    ``jit`` is inlined.
    """

    def to_layers(self, params) -> list:
        return params

    def check(self, params, X: ArrayLike, Y: ArrayLike | None = None) -> None:
        """Raise ValueError/TypeError unless params, X (m, *input_shape) and Y fit.

        params must have the structure and shapes ``init`` makes, in one floating dtype;
        X that dtype; Y floating (m, n_N) targets in it, or (m,) integer labels in
        [0, n_N) for the softmax loss (their range is checked when concrete).
        """
        dtype = checks.params_like(params, expected_params(self))
        net = self.network
        checks.inputs(X, net.input_shape, dtype)
        if Y is not None:
            losses.check_targets(net.loss_name, (np.shape(X)[0], net.n_out), Y, dtype)

    def from_layers(self, layer_params: list):
        return layer_params

    def forward_logits(self, params, X):
        """Z^[N] of a batch: the per-example forward loop, vmapped (``jaxnn.models`` runs
        the batched forms of ``jaxnn.fast`` instead)."""
        return jax.vmap(self.network.logits_example, in_axes=(None, 0))(self.to_layers(params), X)

    def batch_grad(self, params, X, Y):
        """(mean loss, gradient) by the hand-written recursion: here the reference form."""
        loss, grads = self.network.manual_grad(self.to_layers(params), X, Y)
        return loss, self.from_layers(grads)

    # --- cores: no checks, compiled --------------------------------------------------

    @functools.partial(jax.jit, static_argnums=0)
    def _logits(self, params, X):
        return self.forward_logits(params, X)

    @functools.partial(jax.jit, static_argnums=0)
    def _loss(self, params, X, Y):
        net = self.network
        return losses.mean_output_loss(net.output, net.loss_name, self._logits(params, X), Y)

    @functools.partial(jax.jit, static_argnums=0)
    def _manual_grad(self, params, X, Y):
        return self.batch_grad(params, X, Y)

    @functools.partial(jax.jit, static_argnums=(0, 4))
    def _per_example_grads(self, params, X, Y, source):
        net = self.network
        if source == "manual":
            one = functools.partial(net.grad_example, self.to_layers(params))
            per_loss, grads = jax.vmap(one)(X, Y)
            return per_loss, jax.vmap(self.from_layers)(grads)

        def example_loss(p, x, y):
            z = net.logits_example(self.to_layers(p), x)
            return losses.output_loss(net.output, net.loss_name, z, y)

        return jax.vmap(jax.value_and_grad(example_loss), in_axes=(None, 0, 0))(params, X, Y)

    # --- the public methods ----------------------------------------------------------

    def logits(self, params, X: ArrayLike) -> jax.Array:
        """Z^[N] of every example. X: (m, *input_shape). Returns (m, n_N)."""
        self.check(params, X)
        return self._logits(params, X)

    def predict(self, params, X: ArrayLike) -> jax.Array:
        """Ŷ = g^[N](Z^[N]). X: (m, *input_shape). Returns (m, n_N)."""
        return activations.get(self.network.output).g(self.logits(params, X))

    def loss(self, params, X: ArrayLike, Y: ArrayLike) -> jax.Array:
        """(1/m) Σ_i L(ŷ^(i), y^(i)) from the logits (stable forms); ``jax.grad``'s input.

        Under ``jit`` a label outside [0, k) cannot be seen: the loss is then NaN, which
        ``jaxnn.sgd``'s non-finite guard stops at.
        """
        self.check(params, X, Y)
        return self._loss(params, X, Y)

    def manual_grad(self, params, X: ArrayLike, Y: ArrayLike):
        """(mean loss, ∂loss/∂params) by the hand-written δ recursion; no autodiff."""
        self.check(params, X, Y)
        return self._manual_grad(params, X, Y)

    def reference_grad(self, params, X: ArrayLike, Y: ArrayLike):
        """``manual_grad`` as the notes write it: per example, ``jax.vmap``, a mean."""
        self.check(params, X, Y)
        return Model.batch_grad(self, params, X, Y)

    def per_example_grads(self, params, X: ArrayLike, Y: ArrayLike, source: str = "manual"):
        """(L^(i) of shape (m,), ∂L^(i)/∂params with a leading axis m) for every example.

        ``source``: "manual" (the δ recursion, vmapped) or "autodiff" (``jax.grad``,
        vmapped). Their mean over the examples is the batch gradient.
        """
        if source not in ("manual", "autodiff"):
            raise ValueError(f"source must be 'manual' or 'autodiff', got {source!r}")
        self.check(params, X, Y)
        return self._per_example_grads(params, X, Y, source)

    def accuracy(self, params, X: ArrayLike, Y: ArrayLike):
        """Fraction of examples classified right; None for a regression loss."""
        self.check(params, X, Y)
        return losses.accuracy(self.network.loss_name, self._logits(params, X), Y)

    def kink_pattern(self, params, X: ArrayLike):
        """Where the loss is not smooth in params: every layer's ``kinks`` pattern.

        Finite differences whose two evaluations see different patterns crossed a kink.
        """
        return self.network.kink_pattern(self.to_layers(params), jnp.asarray(X))


@dataclass(frozen=True)
class Network(Model):
    """Layers from ``input_shape`` (one example) to z^[N], then g^[N] = ``output`` and a loss.

    Valid (output, loss) pairs: identity/sigmoid/softmax + squared_error, sigmoid +
    logistic, softmax + softmax (integer labels), softmax + cross_entropy. Params are a
    list with one entry per layer (``{}`` for a layer without parameters).
    """

    input_shape: tuple[int, ...]
    layers: tuple
    output: str = "identity"
    loss_name: str = "squared_error"

    def __post_init__(self):
        object.__setattr__(self, "input_shape", checks.shape(self.input_shape, "input_shape"))
        object.__setattr__(self, "layers", tuple(self.layers))
        for layer in self.layers:
            if not isinstance(layer, Layer):
                raise TypeError(f"every layer needs init, forward and backward, got {layer!r}")
        losses.check_pair(self.output, self.loss_name)
        shape = output_shape(self)
        if len(shape) != 1:
            raise ValueError(f"the last layer must output a vector z^[N] (k,), got shape {shape}")

    @property
    def network(self) -> "Network":
        return self

    def init(self, key: jax.Array, method: str = "he", dtype=jnp.float32, **kwargs) -> list:
        """[params of each layer]: shapes inferred from ``input_shape``, W drawn by ``method``."""
        checks.key(key)
        initializers.get(method)
        checks.floating(dtype)
        return init_layers(self.layers, key, self.input_shape, method, dtype, **kwargs)[1]

    def expected(self):
        """The parameters' structure and shapes, as ``jax.ShapeDtypeStruct``s."""
        return expected_params(self)

    @property
    def n_out(self) -> int:
        """n_N, the number of outputs."""
        return output_shape(self)[0]

    # --- one example, as the notes write it ----------------------------------------------

    def logits_example(self, params, x: jax.Array) -> jax.Array:
        """z^[N] of one example x of shape ``input_shape``."""
        return forward(self.layers, params, x)[0]

    def grad_example(self, params, x: jax.Array, y) -> tuple[jax.Array, Any]:
        """(L, ∂L/∂params) for one example by the forward loop, δ^[N] and the δ recursion."""
        z, caches = forward(self.layers, params, x)
        delta_N = losses.delta_output(self.output, self.loss_name, z, y)
        grads, _ = backward(self.layers, params, caches, delta_N)
        return losses.output_loss(self.output, self.loss_name, z, y), grads

    def manual_grad(self, params, X, Y):
        """(mean loss, mean gradient): ``jax.vmap`` of ``grad_example`` over the examples."""
        per_loss, per_grads = jax.vmap(self.grad_example, in_axes=(None, 0, 0))(params, X, Y)
        return jnp.mean(per_loss), jax.tree.map(lambda g: jnp.mean(g, axis=0), per_grads)

    def kink_pattern(self, params, X):
        def one(x):
            _, caches = forward(self.layers, params, x)
            return layer_kinks(self.layers, params, caches)

        return jax.vmap(one)(X)


def layer_kinks(layers, params, caches) -> tuple:
    """The ``kinks`` pattern of every layer that has one (None-free)."""
    found = []
    for layer, p, cache in zip(layers, params, caches, strict=True):
        kinks = getattr(layer, "kinks", None)
        pattern = None if kinks is None else kinks(p, cache)
        if pattern is not None:
            found.append(pattern)
    return tuple(found)


@functools.cache
def output_shape(network: Network) -> tuple[int, ...]:
    """The shape of the last layer's output, by shape inference alone (nothing computed)."""
    shapes = []

    def run():
        shape, params = init_layers(network.layers, jax.random.key(0), network.input_shape)
        shapes.append(shape)
        return params

    jax.eval_shape(run)
    return shapes[0]


@functools.cache
def expected_params(model) -> Any:
    """``jax.eval_shape`` of ``model.init``: the structure, shapes and dtypes of params."""
    return jax.eval_shape(model.init, jax.random.key(0))
