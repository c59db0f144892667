"""Gradient descent, written out: W^[l] <- W^[l] - α ∂L/∂W^[l], b^[l] <- b^[l] - α ∂L/∂b^[l].

The step is one ``jax.jit``-compiled function of (params, optimiser state, minibatch):
forward, gradient (hand-written δ recursion or ``jax.grad``, chosen statically by
``source``) and update. One epoch is a ``lax.scan`` of that step over the minibatches
of a fresh random permutation, so Python dispatches once per epoch, not once per step.
Any optax optimiser can replace the explicit update.

Minibatches: each epoch draws a permutation of the m examples and cuts it into
floor(m / batch_size) batches of batch_size; the m mod batch_size examples left at the
end of that permutation sit out that epoch (a different few each epoch).

A non-finite loss or gradient is detected inside the scan without a host sync per
step: from that step on the update is skipped, so the parameters stay the last finite
ones, and at the end of the epoch ``sgd.train`` raises ``NonFiniteError`` naming the
epoch and step. With ``skip_nonfinite=False`` every step is applied and the error
still names the first bad step, but the parameters it carries are those at the end of
the epoch, non-finite ones included.

Memory. The manual gradient with the explicit update, on a model that offers it
(``DenseNetwork`` in its default rows form) with a layer whose ∂L/∂W^[l] is over one
block (``jaxnn.fast.descent.BLOCK_BYTES``), and parameters that are donated (every
epoch; ``make_step`` off the CPU), runs as ``model.manual_descent`` (``descends``): each
W^[l] is updated block by block in its own buffer after the δ recursion, no ∂L/∂W^[l]
held whole, and a step is skipped when the loss is non-finite or a gradient is not
certainly finite. Every other step computes the whole gradient and then updates;
skipping then holds all of a step's gradients at once, as the decision waits for
every one. The benchmark (``experiments.benchmark``) measures both.
"""

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax

from jaxnn import checks
from jaxnn.fast.descent import BLOCK_BYTES

SOURCES = ("manual", "autodiff")


class NonFiniteError(FloatingPointError):
    """A loss or gradient became NaN or infinite; ``params`` are the last finite ones."""

    def __init__(self, message: str, *, epoch: int, step: int, params, opt_state, history):
        super().__init__(message)
        self.epoch, self.step = epoch, step
        self.params, self.opt_state, self.history = params, opt_state, history


def update(params, grads, alpha):
    """The explicit gradient-descent update θ <- θ - α ∂L/∂θ on every leaf."""
    return jax.tree.map(lambda p, g: p - alpha * g, params, grads)


def gradient(model, source: str) -> Callable:
    """(params, X, Y) -> (mean loss, gradient) from the hand-written or the autodiff path.

    "manual" is ``model.manual_grad`` (the δ recursion); "autodiff" is
    ``jax.value_and_grad(model.loss)``, which never touches the hand-written backward.
    """
    if source == "manual":
        return model.manual_grad
    if source == "autodiff":
        return jax.value_and_grad(model.loss)
    raise ValueError(f"gradient source must be one of {SOURCES}, got {source!r}")


def descends(model, source: str, optimizer, params) -> bool:
    """Whether the step runs as ``model.manual_descent``, each W^[l] updated in place.

    It does for the manual gradient with the explicit update, on a model that offers the
    descent, when some ∂L/∂W^[l] would be larger than one block (``BLOCK_BYTES``):
    smaller networks compute their whole, small, gradient first, in fewer operations.
    """
    if source != "manual" or optimizer is not None:
        return False
    if not getattr(model, "descends_in_place", False):
        return False
    return max(x.size * x.dtype.itemsize for x in jax.tree.leaves(params)) > BLOCK_BYTES


def step(params, opt_state, X, Y, alpha, model, source, optimizer, donated=False):
    """One training step: (new params, new opt_state, loss, grads).

    grads is None for ``model.manual_descent``, which runs only where params are
    ``donated``: otherwise XLA must first copy every W^[l], and the in-place update
    saves nothing.
    """
    if donated and descends(model, source, optimizer, params):
        params, loss, _ = model.manual_descent(params, X, Y, alpha)
        return params, opt_state, loss, None
    loss, grads = gradient(model, source)(params, X, Y)
    if optimizer is None:
        return update(params, grads, alpha), opt_state, loss, grads
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss, grads


def donated() -> tuple[str, ...]:
    """The arguments a compiled step donates: params and opt_state, except on the CPU."""
    return () if jax.default_backend() == "cpu" else ("params", "opt_state")


def make_step(model, source: str = "manual", optimizer: optax.GradientTransformation | None = None):
    """A jitted training step ``step(params, opt_state, X, Y, alpha) -> (params, opt_state, loss)``.

    With ``optimizer=None`` the update is the explicit θ - α g (opt_state is ``()``);
    otherwise the optax optimiser's (alpha then unused). Old params and state are
    donated on backends that support donation (not the CPU).
    """
    gradient(model, source)

    def one_step(params, opt_state, X, Y, alpha):
        model.check(params, X, Y)  # shapes and dtypes: checked once, when traced
        params, opt_state, loss, _ = step(params, opt_state, X, Y, alpha, model, source,
                                          optimizer, bool(donated()))
        return params, opt_state, loss

    return jax.jit(one_step, donate_argnames=donated())


def init_state(params, optimizer: optax.GradientTransformation | None):
    """Optimiser state: ``()`` for the explicit update, ``optimizer.init(params)`` otherwise."""
    return () if optimizer is None else optimizer.init(params)


def batch_indices(key: jax.Array, m: int, batch_size: int, shuffle: bool = True) -> jax.Array:
    """Indices of floor(m / batch_size) minibatches, shape (n_batches, batch_size).

    Shuffled by a permutation drawn with ``key``; with ``shuffle=False`` the examples go
    in their order, 0, 1, ..., every epoch (the last m mod batch_size always sit out).
    """
    m = checks.integer(m, "m", 0)
    batch_size = checks.integer(batch_size, "batch_size", 1, max(m, 1), f"m={m}")
    n_batches = m // batch_size
    order = jax.random.permutation(key, m) if shuffle else jnp.arange(m)
    return order[: n_batches * batch_size].reshape(n_batches, -1)


def all_finite(*trees) -> jax.Array:
    """True when every element of every leaf is finite."""
    return jnp.all(jnp.array([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(trees)]))


def guarded_step(carry, i, X, Y, alpha, model, source, optimizer, skip_nonfinite=True):
    """One step of an epoch's scan, skipped once a loss or gradient was non-finite.

    carry = (params, opt_state, bad), bad being -1 or the first bad step's index; i is
    this step's index.
    With skip_nonfinite=False the step is applied regardless (bad is still recorded).
    A step that ``descends`` in place is bad when ``jaxnn.fast.descent`` cannot
    certify its gradient finite; any other when the loss or a gradient is not finite
    (skipping) or the loss or a new parameter is not (skip_nonfinite=False).
    Returns (carry, loss).
    """
    params, opt_state, bad = carry
    if descends(model, source, optimizer, params):
        params, loss, ok = model.manual_descent(params, X, Y, alpha,
                                                (bad < 0) if skip_nonfinite else None)
        return (params, opt_state, jnp.where((bad < 0) & ~ok, i, bad)), loss
    new_params, new_state, loss, grads = step(
        params, opt_state, X, Y, alpha, model, source, optimizer)
    if not skip_nonfinite:
        # the new parameters are finite iff the gradients were (barring overflow in the
        # update, which is as bad); checking them keeps no gradient alive for the check
        ok = all_finite(loss, new_params, new_state)
        return (new_params, new_state, jnp.where((bad < 0) & ~ok, i, bad)), loss
    ok = (bad < 0) & all_finite(loss, grads)
    keep = functools.partial(jnp.where, ok)
    params = jax.tree.map(keep, new_params, params)
    opt_state = jax.tree.map(keep, new_state, opt_state)
    bad = jnp.where((bad < 0) & ~ok, i, bad)
    return (params, opt_state, bad), loss


def _epoch(params, opt_state, X, Y, key, alpha, model, source, optimizer, batch_size,
           skip_nonfinite=True, shuffle=True):
    batches = batch_indices(key, X.shape[0], batch_size, shuffle)

    def body(carry, step_and_idx):
        i, idx = step_and_idx
        return guarded_step(carry, i, X[idx], Y[idx], alpha, model, source, optimizer,
                            skip_nonfinite)

    steps = jnp.arange(batches.shape[0], dtype=jnp.int32)
    (params, opt_state, bad), losses = jax.lax.scan(
        body, (params, opt_state, jnp.int32(-1)), (steps, batches))
    return params, opt_state, losses, bad


_STATIC = ("model", "source", "optimizer", "batch_size", "skip_nonfinite", "shuffle")
epoch_donating = jax.jit(_epoch, static_argnames=_STATIC, donate_argnames=("params", "opt_state"))


def run_epoch(params, opt_state, X, Y, key, alpha, *, model, source, optimizer, batch_size,
              skip_nonfinite: bool = True, shuffle: bool = True):
    """One epoch as one compiled ``lax.scan``.

    Returns (params, opt_state, losses of shape (n_batches,), first bad step or -1).
    Compiled once per (model, source, optimizer, batch_size, shapes, dtypes). The
    params and opt_state given are donated on every backend: the returned ones take
    over their buffers and the arrays passed in are deleted (``sgd.train`` passes a copy);
    without donation the old and new parameters would coexist at the end of the epoch.
    """
    return epoch_donating(params, opt_state, X, Y, key, alpha, model=model, source=source,
                          optimizer=optimizer, batch_size=batch_size,
                          skip_nonfinite=bool(skip_nonfinite), shuffle=bool(shuffle))


class Epochs:
    """A training loop's epochs: ``start`` (params, opt_state) and a call per epoch."""

    def __init__(self, start, run):
        self.start, self._run = start, run

    def __call__(self, e, params, opt_state):
        return self._run(e, params, opt_state)


def finish_epoch(e: int, params, opt_state, losses, bad, history: dict,
                 accuracy: Callable, on_epoch: Callable | None,
                 skip_nonfinite: bool = True) -> None:
    """The end of epoch e of the training loop.

    Raises NonFiniteError when the epoch's first bad step ``bad`` is >= 0; otherwise
    appends the mean of ``losses`` and ``accuracy(params)`` to ``history`` and calls
    ``on_epoch(e, params, opt_state, history)``.
    """
    bad = int(bad)
    if bad >= 0:
        which = ("the last finite ones" if skip_nonfinite
                 else "those at the end of the epoch (skip_nonfinite=False)")
        raise NonFiniteError(
            f"non-finite loss or gradient at epoch {e}, step {bad} of that epoch "
            f"(loss there: {float(losses[bad])}); params are {which}",
            epoch=e, step=bad, params=params, opt_state=opt_state, history=history)
    history["loss"].append(float(jnp.mean(losses)))
    acc = accuracy(params)
    history["accuracy"].append(None if acc is None else float(acc))
    if on_epoch is not None:
        on_epoch(e, params, opt_state, history)
