"""A model: static configuration kept apart from its parameter pytree.

Every model (``DenseNetwork`` here, ``jaxnn.cnn.CNN``) is a frozen, hashable dataclass,
so it can be a static argument of ``jax.jit``, and offers the same methods:

    init(key, method, dtype)        -> params (a pytree of arrays, nothing else)
    logits(params, X)               -> Z^[N], (m, k)
    predict(params, X)              -> Ŷ = g^[N](Z^[N]), (m, k)
    loss(params, X, Y)              -> mean loss over the m examples (stable form);
                                       ``jax.grad`` of this is the autodiff gradient
    manual_grad(params, X, Y)       -> (mean loss, gradient) by the hand-written δ recursion
    accuracy(params, X, Y)          -> fraction right, or None for regression
    check(params, X, Y)             -> raises ValueError/TypeError on inconsistent input

and optionally, where ``descends_in_place`` is True (``DenseNetwork`` in the rows form):

    manual_descent(params, X, Y, alpha, allow)
                                    -> (new params, mean loss, ok): one step of gradient
                                       descent by the δ recursion, updated in place

``jaxnn.sgd`` and ``jaxnn.gradcheck`` take any such model.
"""

from dataclasses import dataclass

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from jaxnn import activations, backprop, dense, losses

GRAD_FORMS = {"rows": backprop.grad_rows, "matrix": backprop.grad_matrix,
              "vmap": backprop.grad_vmap}


@dataclass(frozen=True)
class DenseNetwork:
    """An N-layer dense network: sizes (n_0, ..., n_N), one hidden g, an output g^[N], a loss.

    Valid (output, loss) pairs: identity/sigmoid/softmax + squared_error,
    sigmoid + logistic, softmax + softmax (integer labels), softmax + cross_entropy
    (probability targets). ``grad_form`` picks the manual batch gradient: "rows" (the
    notes' vectorised form with examples as rows, ``backprop.grad_rows``: the fastest,
    used for training), "matrix" (Δ A^T / m with examples as columns, exactly as the
    notes write it) or "vmap" (the per-example recursion, vmapped).
    """

    sizes: tuple[int, ...]
    hidden: str = "relu"
    output: str = "identity"
    loss_name: str = "squared_error"
    grad_form: str = "rows"

    def __post_init__(self):
        object.__setattr__(self, "sizes", dense.check_sizes(self.sizes))
        if self.hidden not in activations.HIDDEN:
            raise ValueError(
                f"hidden activation must be one of {activations.HIDDEN}, got {self.hidden!r}"
            )
        losses.check_pair(self.output, self.loss_name)
        if self.grad_form not in GRAD_FORMS:
            raise ValueError(f"grad_form must be one of {tuple(GRAD_FORMS)}, "
                             f"got {self.grad_form!r}")

    def init(self, key: jax.Array, method: str = "he", dtype=jnp.float32, **kwargs):
        """Parameters for this network (see ``dense.init``)."""
        return dense.init(key, self.sizes, method, dtype, **kwargs)

    def logits(self, params, X: ArrayLike) -> jax.Array:
        """Z^[N] of every example. X: (m, n_0). Returns (m, n_N)."""
        self.check(params, X)
        return jax.vmap(dense.logits, in_axes=(None, 0, None))(params, X, self.hidden)

    def predict(self, params, X: ArrayLike) -> jax.Array:
        """Ŷ = a^[N] of every example. X: (m, n_0). Returns (m, n_N)."""
        self.check(params, X)
        return dense.forward_batch(params, X, self.hidden, self.output)

    def loss(self, params, X: ArrayLike, Y: ArrayLike) -> jax.Array:
        """(1/m) Σ_i L(ŷ^(i), y^(i)) from the logits (log-sum-exp / log-sigmoid forms)."""
        self.check(params, X, Y)
        return losses.mean_output_loss(self.output, self.loss_name, self.logits(params, X), Y)

    def manual_grad(self, params, X: ArrayLike, Y: ArrayLike):
        """(mean loss, ∂loss/∂params) by the hand-written δ recursion; no autodiff."""
        self.check(params, X, Y)
        return GRAD_FORMS[self.grad_form](params, X, Y, self.hidden, self.output, self.loss_name)

    @property
    def descends_in_place(self) -> bool:
        """Whether ``jaxnn.sgd`` trains with ``manual_descent``: in the rows form (default)."""
        return self.grad_form == "rows"

    def manual_descent(self, params, X: ArrayLike, Y: ArrayLike, alpha, allow=None):
        """(new params, mean loss, ok): θ <- θ - α ∂L/∂θ by ``backprop.descend_rows``.

        The explicit update with the manual gradient, each W^[l] updated block by block
        so that no ∂L/∂W^[l] is held whole; applied where ok and allow (None: always).
        """
        self.check(params, X, Y)
        return backprop.descend_rows(params, X, Y, alpha, self.hidden, self.output,
                                     self.loss_name, allow)

    def accuracy(self, params, X: ArrayLike, Y: ArrayLike):
        """Fraction of examples classified right; None for a regression loss."""
        self.check(params, X, Y)
        return losses.accuracy(self.loss_name, self.logits(params, X), Y)

    def check(self, params, X: ArrayLike, Y: ArrayLike | None = None) -> None:
        """Raise ValueError/TypeError unless params, X (m, n_0) and Y fit this network.

        Y must be (m, n_N) floating targets in the parameters' dtype, or (m,) integer
        labels in [0, n_N) for the softmax loss (their range is checked when concrete).
        Shapes and dtypes are static, so under ``jit`` this costs nothing after tracing.
        """
        dense.check_input(params, X)
        n_N = jnp.shape(params[-1]["W"])[0]
        sizes = (jnp.shape(params[0]["W"])[1],) + tuple(jnp.shape(p["W"])[0] for p in params)
        if sizes != self.sizes:
            raise ValueError(f"params have layer sizes {sizes}, the network {self.sizes}")
        if Y is not None:
            losses.check_targets(self.loss_name, (jnp.shape(X)[0], n_N), Y,
                                 jnp.result_type(params[0]["W"]))

    def kink_pattern(self, params, X: ArrayLike):
        """Where the loss is not smooth in params: the sign of every ReLU's z^[l] (l < N).

        Finite differences whose two evaluations see different patterns crossed a kink.
        Empty for smooth hidden activations.
        """
        if self.hidden != "relu":
            return ()
        Zs, _ = dense.forward_matrix_cache(params, jnp.asarray(X).T, self.hidden, self.output)
        return tuple(Z > 0 for Z in Zs[:-1])
