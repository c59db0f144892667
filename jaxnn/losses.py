"""The notes' four losses, their stable from-logits forms, and the output-layer δ^[N].

Per example, with ŷ = a^[N] = g^[N](z^[N]):

    squared_error   L = 1/2 ||ŷ - y||^2                      (regression)
    logistic        L = -(y log ŷ + (1 - y) log(1 - ŷ))       (binary; summed over units)
    softmax         L = -Σ_j 1{y = j} log ŷ_j = -log ŷ_y     (integer label y in [0, k))
    cross_entropy   L = -Σ_i y_i log ŷ_i                      (probability targets y)

Erratum: the notes print the logistic loss as -(y log ŷ - (1 - y) log(1 - ŷ)); the minus
inside is wrong (that expression is not minimised at ŷ = y). The form above is the
correct one.

Every per-example loss returns a scalar; ``batch_loss`` takes the mean over the m
examples, the convention of the whole package. Training uses the from-logits forms
(log-sigmoid, log-sum-exp), which stay finite where the probability forms overflow.
"""

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from jaxnn import activations, checks

# --- checks shared by the per-example functions ------------------------------------------
# They look at shapes and dtypes only, which are static under jit and vmap, so they cost
# nothing after tracing; a label's range is checked when its value is concrete.


def _dtype(value, what: str):
    if isinstance(value, (list, tuple)):
        raise TypeError(f"{what} must be an array, got a {type(value).__name__}")
    return jnp.result_type(value)


def _check_output(loss: str, y_hat, what: str = "ŷ") -> None:
    """ŷ (or z) of one example: shape (k,), floating."""
    if np.ndim(y_hat) != 1:
        raise ValueError(
            f"loss {loss!r} takes {what} of one example, shape (k,), got shape {np.shape(y_hat)}"
        )
    dtype = _dtype(y_hat, what)
    if not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(f"loss {loss!r} expects a floating {what}, got dtype {dtype}")


def _check_same(loss: str, y_hat, y, what: str = "ŷ") -> None:
    """Target y of one example with exactly ŷ's shape (k,) and a floating dtype."""
    _check_output(loss, y_hat, what)
    if np.shape(y) != np.shape(y_hat):
        raise ValueError(
            f"loss {loss!r} expects a target y of shape {np.shape(y_hat)} (same as {what}), "
            f"got shape {np.shape(y)}"
        )
    dtype = _dtype(y, "y")
    if not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(f"loss {loss!r} expects a floating target y, got dtype {dtype}")


def _check_label(loss: str, y_hat, y, what: str = "ŷ") -> None:
    """Integer label y of one example: a scalar in [0, k) for ŷ of shape (k,)."""
    _check_output(loss, y_hat, what)
    if np.ndim(y) != 0:
        raise ValueError(
            f"loss {loss!r} expects one integer label per example (shape ()), "
            f"got shape {np.shape(y)}"
        )
    dtype = _dtype(y, "y")
    if not jnp.issubdtype(dtype, jnp.integer):
        raise TypeError(f"loss {loss!r} expects an integer label, got dtype {dtype}")
    if not isinstance(y, jax.core.Tracer):
        k = np.shape(y_hat)[0]
        value = int(np.asarray(y))
        if not 0 <= value < k:
            raise ValueError(f"label must lie in [0, {k}), got {value}")


# --- per-example losses, exactly as the notes write them -------------------------------


def squared_error(y_hat: ArrayLike, y: ArrayLike) -> jax.Array:
    """L(ŷ, y) = 1/2 ||ŷ - y||^2. ŷ, y: shape (k,). Returns a scalar."""
    _check_same("squared_error", y_hat, y)
    d = jnp.asarray(y_hat) - y
    return 0.5 * jnp.sum(d * d)


def logistic(y_hat: ArrayLike, y: ArrayLike) -> jax.Array:
    """L(ŷ, y) = -(y log ŷ + (1 - y) log(1 - ŷ)), summed over units (sign erratum fixed).

    ŷ in (0, 1) and y in {0, 1} (or [0, 1]), both of shape (k,). Returns a scalar.
    """
    _check_same("logistic", y_hat, y)
    y_hat = jnp.asarray(y_hat)
    return -jnp.sum(y * jnp.log(y_hat) + (1 - y) * jnp.log1p(-y_hat))


def nan_unless_label(value: jax.Array, y, k: int) -> jax.Array:
    """``value`` where the integer label y lies in [0, k), NaN elsewhere.

    Under ``jit`` a label's value cannot be checked before the step runs; a label out
    of range (k, or -1, which indexing would wrap to k - 1) then gives a NaN loss and
    δ^[N], which ``jaxnn.sgd``'s non-finite guard stops at, not a finite wrong step.
    """
    y = jnp.asarray(y)
    valid = (y >= 0) & (y < k)
    return jnp.where(valid.reshape(valid.shape + (1,) * (jnp.ndim(value) - valid.ndim)),
                     value, jnp.nan)


def _at_label(v: jax.Array, y) -> jax.Array:
    """v_y for a label y in [0, k); NaN for a label outside."""
    k = v.shape[-1]
    return nan_unless_label(jnp.take(v, jnp.clip(y, 0, k - 1)), y, k)


def softmax_loss(y_hat: ArrayLike, y: ArrayLike) -> jax.Array:
    """L(ŷ, y) = -Σ_j 1{y = j} log ŷ_j = -log ŷ_y. ŷ: (k,) probabilities; y: integer scalar."""
    _check_label("softmax", y_hat, y)
    return -jnp.log(_at_label(jnp.asarray(y_hat), y))


def cross_entropy(y_hat: ArrayLike, y: ArrayLike) -> jax.Array:
    """L(ŷ, y) = -Σ_i y_i log ŷ_i. ŷ, y: shape (k,), y a probability vector. Returns a scalar."""
    _check_same("cross_entropy", y_hat, y)
    return -jnp.sum(y * jnp.log(y_hat))


# --- stable forms from the logits z = z^[N] ---------------------------------------------


def logistic_from_logits(z: ArrayLike, y: ArrayLike) -> jax.Array:
    """logistic(sigmoid(z), y) as -(y log σ(z) + (1 - y) log σ(-z)), finite for any z."""
    _check_same("logistic", z, y, "z")
    z = jnp.asarray(z)
    return -jnp.sum(y * jax.nn.log_sigmoid(z) + (1 - y) * jax.nn.log_sigmoid(-z))


def softmax_loss_from_logits(z: ArrayLike, y: ArrayLike) -> jax.Array:
    """softmax_loss(softmax(z), y) as logsumexp(z) - z_y."""
    _check_label("softmax", z, y, "z")
    z = jnp.asarray(z)
    return jax.nn.logsumexp(z) - _at_label(z, y)


def cross_entropy_from_logits(z: ArrayLike, y: ArrayLike) -> jax.Array:
    """cross_entropy(softmax(z), y) as -Σ_i y_i (z_i - logsumexp(z))."""
    _check_same("cross_entropy", z, y, "z")
    z = jnp.asarray(z)
    return -jnp.sum(y * (z - jax.nn.logsumexp(z)))


# --- ∇_ŷ L, written by hand for the general δ^[N] ---------------------------------------


def squared_error_grad(y_hat: ArrayLike, y: ArrayLike) -> jax.Array:
    """∇_ŷ 1/2 ||ŷ - y||^2 = ŷ - y."""
    _check_same("squared_error", y_hat, y)
    return jnp.asarray(y_hat) - y


def logistic_grad(y_hat: ArrayLike, y: ArrayLike) -> jax.Array:
    """∇_ŷ logistic = -y/ŷ + (1 - y)/(1 - ŷ)."""
    _check_same("logistic", y_hat, y)
    y_hat = jnp.asarray(y_hat)
    return -y / y_hat + (1 - y) / (1 - y_hat)


def softmax_loss_grad(y_hat: ArrayLike, y: ArrayLike) -> jax.Array:
    """∇_ŷ (-log ŷ_y) = -e_y / ŷ_y (zero except at the label)."""
    _check_label("softmax", y_hat, y)
    y_hat = jnp.asarray(y_hat)
    return -one_hot(y, y_hat.shape[-1], y_hat.dtype) / y_hat


def cross_entropy_grad(y_hat: ArrayLike, y: ArrayLike) -> jax.Array:
    """∇_ŷ (-Σ y_i log ŷ_i) = -y / ŷ."""
    _check_same("cross_entropy", y_hat, y)
    return -jnp.asarray(y) / y_hat


def one_hot(y: ArrayLike, k: int, dtype) -> jax.Array:
    """e_y, the one-hot vector of an integer label y in [0, k); shape y.shape + (k,)."""
    dtype_y = _dtype(y, "y")
    if not jnp.issubdtype(dtype_y, jnp.integer):
        raise TypeError(f"one_hot expects integer labels, got dtype {dtype_y}")
    return (jnp.asarray(y)[..., None] == jnp.arange(k)).astype(dtype)


# --- registry --------------------------------------------------------------------------


class Loss(NamedTuple):
    """A loss: its probability form, ∇_ŷ of it, and how targets look.

    ``target`` is "same" (y has ŷ's shape, a float array) or "label" (y is an integer).
    ``canonical`` maps the output activation whose pairing gives δ^[N] = ŷ - y to the
    stable from-logits form of the loss.
    """

    name: str
    L: Callable[[ArrayLike, ArrayLike], jax.Array]
    grad_y_hat: Callable[[ArrayLike, ArrayLike], jax.Array]
    target: str
    outputs: tuple[str, ...]
    canonical: dict


LOSSES: dict[str, Loss] = {
    "squared_error": Loss(
        "squared_error", squared_error, squared_error_grad, "same",
        ("identity", "sigmoid", "softmax"), {"identity": squared_error},
    ),
    "logistic": Loss(
        "logistic", logistic, logistic_grad, "same", ("sigmoid",),
        {"sigmoid": logistic_from_logits},
    ),
    "softmax": Loss(
        "softmax", softmax_loss, softmax_loss_grad, "label", ("softmax",),
        {"softmax": softmax_loss_from_logits},
    ),
    "cross_entropy": Loss(
        "cross_entropy", cross_entropy, cross_entropy_grad, "same", ("softmax",),
        {"softmax": cross_entropy_from_logits},
    ),
}


def get(name: str) -> Loss:
    """The loss called ``name``; an unknown name raises ValueError listing the known ones."""
    if not isinstance(name, str) or name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; expected one of {sorted(LOSSES)}")
    return LOSSES[name]


def check_pair(output: str, loss: str) -> None:
    """Raise ValueError unless output activation and loss make a valid pair."""
    activations.get(output)
    spec = get(loss)
    if output not in activations.OUTPUTS:
        raise ValueError(
            f"output activation must be one of {activations.OUTPUTS}, got {output!r}"
        )
    if output not in spec.outputs:
        raise ValueError(
            f"loss {loss!r} needs an output activation in {spec.outputs}, got {output!r}"
        )


def is_canonical(output: str, loss: str) -> bool:
    """True for identity+squared_error, sigmoid+logistic, softmax+softmax/cross_entropy."""
    return output in get(loss).canonical


# --- the output layer: loss and δ^[N] from z^[N] -----------------------------------------


def output_loss(output: str, loss: str, z: ArrayLike, y: ArrayLike) -> jax.Array:
    """L(g^[N](z), y) for one example; the stable from-logits form for canonical pairs.

    z: z^[N] of shape (k,); y: shape (k,) or an integer label. Returns a scalar.
    """
    check_pair(output, loss)
    spec = get(loss)
    if output in spec.canonical:
        return spec.canonical[output](z, y)
    return spec.L(activations.get(output).g(z), y)


def mean_output_loss(output: str, loss: str, Z: ArrayLike, Y: ArrayLike) -> jax.Array:
    """(1/m) Σ_i ``output_loss(output, loss, z^(i), y^(i))``: the batch loss from logits.

    Z: Z^[N] with examples as rows, (m, k); Y: (m, k) or (m,) labels. Returns a scalar.
    """
    per_example = jax.vmap(output_loss, in_axes=(None, None, 0, 0))
    return jnp.mean(per_example(output, loss, Z, Y))


def delta_output_general(output: str, loss: str, z: ArrayLike, y: ArrayLike) -> jax.Array:
    """δ^[N] = ∇_ŷ L(ŷ, y) ∘ (g^[N])'(z^[N]), the notes' general form, for one example.

    For softmax, whose Jacobian is not diagonal, the elementwise product becomes
    the Jacobian-vector product Jᵀ ∇_ŷ L. z: shape (k,). Returns shape (k,).
    """
    check_pair(output, loss)
    g = activations.get(output)
    grad = get(loss).grad_y_hat(g.g(z), y)
    if g.elementwise:
        return grad * g.g_prime(z)
    return activations.softmax_jvp(z, grad)


def delta_output(output: str, loss: str, z: ArrayLike, y: ArrayLike) -> jax.Array:
    """δ^[N] for one example: ŷ - y for canonical pairs, the general form otherwise.

    With integer labels (softmax loss) y stands for its one-hot vector e_y.
    z: shape (k,). Returns shape (k,).
    """
    check_pair(output, loss)
    if not is_canonical(output, loss):
        return delta_output_general(output, loss, z, y)
    if get(loss).target == "label":
        _check_label(loss, z, y, "z")
        y_hat = activations.get(output).g(z)
        k = y_hat.shape[-1]
        return nan_unless_label(y_hat - one_hot(y, k, y_hat.dtype), y, k)
    _check_same(loss, z, y, "z")
    return activations.get(output).g(z) - y


def delta_output_rows(output: str, loss: str, Z: ArrayLike, Y: ArrayLike) -> jax.Array:
    """δ^[N] of every example as rows: Δ^[N]ᵀ of shape (m, k), from Z^[N]ᵀ (m, k).

    Row i is ``delta_output(output, loss, Z[i], Y[i])``. For integer labels Ŷ - E_Y is
    formed by subtracting 1 at each row's label, ŷ_(i) - e_y(i) without building the
    one-hot rows: the same numbers, per example (a batch split over devices stays
    split), and faster on XLA's CPU backend than a one-hot comparison.
    """
    check_pair(output, loss)
    Z = jnp.asarray(Z)
    if Z.ndim != 2:
        raise ValueError(f"expected Z^[N] of shape (m, k), got shape {Z.shape}")
    if not (is_canonical(output, loss) and get(loss).target == "label"):
        return jax.vmap(delta_output, in_axes=(None, None, 0, 0))(output, loss, Z, Y)
    check_targets(loss, Z.shape, Y)
    Y = jnp.asarray(Y)
    Y_hat_minus_E = jax.vmap(lambda y_hat, y: y_hat.at[y].add(-1))(activations.get(output).g(Z), Y)
    return nan_unless_label(Y_hat_minus_E, Y, Z.shape[1])


# --- batches ------------------------------------------------------------------------------


def check_targets(loss: str, y_hat_shape: tuple, Y, dtype=None) -> None:
    """Validate a batch of targets against outputs of shape ``y_hat_shape`` = (m, k).

    Float targets must have exactly ŷ's shape (no broadcasting of (m,) against (m, 1))
    and, when ``dtype`` is given (the parameters' dtype), that dtype; integer labels must
    have shape (m,), an integer dtype, and values in [0, k).
    Raises ValueError or TypeError naming what was expected and what came.
    """
    spec = get(loss)
    y_hat_shape = tuple(y_hat_shape)
    if len(y_hat_shape) != 2:
        raise ValueError(f"expected outputs of shape (m, k), got shape {y_hat_shape}")
    shape = tuple(np.shape(Y))
    target_dtype = _dtype(Y, "targets Y")
    if spec.target == "label":
        if shape != y_hat_shape[:-1]:
            raise ValueError(
                f"loss {loss!r} expects integer labels of shape {y_hat_shape[:-1]}, "
                f"got shape {shape}"
            )
        if not jnp.issubdtype(target_dtype, jnp.integer):
            raise TypeError(f"loss {loss!r} expects integer labels, got dtype {target_dtype}")
        checks.labels(Y, y_hat_shape[-1])
    else:
        if shape != tuple(y_hat_shape):
            raise ValueError(
                f"loss {loss!r} expects targets of shape {tuple(y_hat_shape)} (same as ŷ), "
                f"got shape {shape}"
            )
        if not jnp.issubdtype(target_dtype, jnp.floating):
            raise TypeError(f"loss {loss!r} expects floating targets, got dtype {target_dtype}")
        if dtype is not None and target_dtype != jnp.dtype(dtype):
            raise TypeError(
                f"targets have dtype {target_dtype}, the parameters {jnp.dtype(dtype)}; "
                "cast one to the other (no silent promotion)"
            )


def batch_loss(loss: str, Y_hat: ArrayLike, Y: ArrayLike) -> jax.Array:
    """(1/m) Σ_i L(ŷ^(i), y^(i)), the probability form. Y_hat: (m, k); Y: (m, k) or (m,)."""
    Y_hat = jnp.asarray(Y_hat)
    check_targets(loss, Y_hat.shape, Y, Y_hat.dtype)
    return jnp.mean(jax.vmap(get(loss).L)(Y_hat, Y))


def accuracy(loss: str, Z: ArrayLike, Y: ArrayLike) -> jax.Array | None:
    """Fraction of examples classified right, from the logits Z = Z^[N] of shape (m, k).

    softmax: argmax_j z_j == y; cross_entropy: argmax z == argmax y; logistic: z > 0
    (ŷ > 1/2) agrees with y > 1/2 on every unit. None for squared_error (regression).
    """
    Z = jnp.asarray(Z)
    check_targets(loss, Z.shape, Y)
    if loss == "softmax":
        return jnp.mean(jnp.argmax(Z, axis=-1) == Y)
    if loss == "cross_entropy":
        return jnp.mean(jnp.argmax(Z, axis=-1) == jnp.argmax(Y, axis=-1))
    if loss == "logistic":
        return jnp.mean(jnp.all((Z > 0) == (jnp.asarray(Y) > 0.5), axis=-1))
    return None
