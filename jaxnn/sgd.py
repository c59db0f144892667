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
ones, and at the end of the epoch ``train`` raises ``NonFiniteError`` naming the
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

One loop. ``train`` is the one training entry: ``checkpoints=`` (a
``jaxnn.checkpoint.Checkpoints``) saves every few epochs and resumes from the newest
valid checkpoint, ``mesh=`` (a ``jax.sharding.Mesh``, ``jaxnn.parallel.make_mesh``)
runs every epoch data parallel over its devices.
"""

import functools
import math
import numbers
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
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
    over their buffers and the arrays passed in are deleted (``train`` passes a copy);
    without donation the old and new parameters would coexist at the end of the epoch.
    """
    return epoch_donating(params, opt_state, X, Y, key, alpha, model=model, source=source,
                          optimizer=optimizer, batch_size=batch_size,
                          skip_nonfinite=bool(skip_nonfinite), shuffle=bool(shuffle))


def check_config(alpha, epochs: int, batch_size: int, m: int, source: str) -> None:
    """Raise ValueError/TypeError for a bad learning rate, epoch count, batch size or source.

    alpha: a real number (Python or numpy scalar, or a 0-d array), finite and > 0;
    epochs: an int >= 0; batch_size: an int in [1, m]; source: one of ``SOURCES``.
    """
    if isinstance(alpha, bool | np.bool_) or not (
        isinstance(alpha, numbers.Real)
        or (np.shape(alpha) == () and hasattr(alpha, "dtype")
            and jnp.issubdtype(alpha.dtype, jnp.floating))
    ):
        raise TypeError(f"learning rate alpha must be a number, got {type(alpha).__name__}")
    if not (math.isfinite(alpha) and alpha > 0):
        raise ValueError(f"learning rate alpha must be finite and > 0, got {alpha}")
    checks.integer(epochs, "epochs", 0)
    checks.integer(batch_size, "batch_size", 1, m, f"m={m}")
    if source not in SOURCES:
        raise ValueError(f"gradient source must be one of {SOURCES}, got {source!r}")


@functools.partial(jax.jit, static_argnums=0)
def _accuracy(model, params, X, Y):
    return model.accuracy(params, X, Y)


def train(
    model,
    params,
    X,
    Y,
    *,
    key: jax.Array,
    alpha: float = 0.1,
    epochs: int = 10,
    batch_size: int = 32,
    source: str = "manual",
    optimizer: optax.GradientTransformation | None = None,
    opt_state: Any = None,
    on_epoch: Callable | None = None,
    start_epoch: int = 0,
    history: dict | None = None,
    skip_nonfinite: bool = True,
    shuffle: bool = True,
    checkpoints=None,
    mesh=None,
    min_shard_size: int = 2**16,
) -> tuple[Any, dict]:
    """Minibatch training for ``epochs`` epochs: the one training loop.

    Args:
      model: a model (``jaxnn.models.Model``: ``DenseNetwork``, ``CNN``, a ``Network``).
      params: its parameters; X: (m, ...) inputs; Y: (m, k) targets or (m,) labels.
      key: PRNG key for the per-epoch shuffles (epoch e uses fold_in(key, e)).
      alpha: learning rate of the explicit update (ignored when ``optimizer`` is given).
      source: "manual" (δ recursion) or "autodiff" (jax.grad).
      optimizer: an optax optimiser instead of the explicit update.
      opt_state: the optimiser state to start from (default ``init_state``); a state of
        another structure, shape or dtype than the optimiser's raises ValueError.
      on_epoch: called as on_epoch(epoch, params, opt_state, history) after each epoch.
      start_epoch, history: resume a run after its epochs 0 .. start_epoch - 1, from
        their params, opt_state and history (each list of length start_epoch). Epoch e
        shuffles with fold_in(key, e) whatever the start, so a run resumed from the state
        after epoch e - 1 repeats the uninterrupted run exactly.
      skip_nonfinite: skip every update from the first non-finite loss or gradient of an
        epoch on, so that NonFiniteError carries the last finite params (default). False
        saves the memory this takes where the whole gradient comes first; the error's
        params are then the epoch's last ones.
      shuffle: False keeps the examples in their order every epoch (a fixed minibatch
        sequence); True draws a permutation per epoch.
      checkpoints: a ``jaxnn.checkpoint.Checkpoints``: a checkpoint every few epochs,
        and the run resumed from the newest valid one in its folder (start_epoch,
        history and opt_state then come from it).
      mesh: a ``jax.sharding.Mesh`` with a "data" axis (``jaxnn.parallel.make_mesh``):
        every minibatch split over its devices, the parameters replicated (or split by
        rows over a "model" axis, those of at least ``min_shard_size`` elements); the
        result equals one device's up to the order of floating-point additions.
    Returns:
      (params, history) with history {"loss": mean minibatch loss per epoch,
      "accuracy": training accuracy after each epoch (None for regression)}. With a
      mesh, params are on it (``jaxnn.parallel.local_copy`` gives whole arrays).
    Raises:
      NonFiniteError when a loss or gradient stops being finite.
    """
    m = int(np.shape(X)[0])
    start_epoch = _check_train(model, params, X, Y, key, alpha, epochs, batch_size, source,
                               optimizer, on_epoch, start_epoch, skip_nonfinite, shuffle)
    epochs, batch_size = int(epochs), int(batch_size)
    if opt_state is None:
        opt_state = init_state(params, optimizer)
    else:
        check_opt_state(opt_state, params, optimizer)
    history = _start_history(history, start_epoch)
    if checkpoints is not None:
        resumed = checkpoints.start(model, params, opt_state, key, epochs=epochs, m=m,
                                    alpha=alpha, batch_size=batch_size, source=source,
                                    optimizer=optimizer)
        if resumed is not None:
            params, opt_state, start_epoch, history = resumed
        on_epoch = checkpoints.after_epoch(on_epoch, key, m // batch_size, epochs)
    if mesh is None:
        epoch, local = _one_device(model, params, opt_state, X, Y, key, alpha, source,
                                   optimizer, batch_size, skip_nonfinite, shuffle)
    else:
        from jaxnn import parallel  # parallel builds on this module

        epoch, local = parallel.epochs(mesh, model, params, opt_state, X, Y, key, alpha,
                                       source, optimizer, batch_size, skip_nonfinite,
                                       shuffle, min_shard_size)
    accuracy = functools.partial(_accuracy, model)
    params, opt_state = epoch.start
    for e in range(start_epoch, epochs):
        params, opt_state, losses, bad = epoch(e, params, opt_state)
        try:
            finish_epoch(e, params, opt_state, local(losses), bad, history,
                         lambda p: accuracy(local(p), X, Y), on_epoch, skip_nonfinite)
        except NonFiniteError as error:
            if checkpoints is not None:
                checkpoints.note(error)
            raise
    return params, history


def _check_train(model, params, X, Y, key, alpha, epochs, batch_size, source, optimizer,
                 on_epoch, start_epoch, skip_nonfinite, shuffle) -> int:
    """``train``'s arguments, validated; returns start_epoch as an int."""
    model.check(params, X, Y)
    m = int(np.shape(X)[0])
    check_config(alpha, epochs, batch_size, m, source)
    for name, flag in (("skip_nonfinite", skip_nonfinite), ("shuffle", shuffle)):
        if not isinstance(flag, bool | np.bool_):
            raise TypeError(f"{name} must be True or False, got {flag!r}")
    checks.key(key)
    if on_epoch is not None and not callable(on_epoch):
        raise TypeError(f"on_epoch must be callable, got {type(on_epoch).__name__}")
    if optimizer is not None and not (callable(getattr(optimizer, "init", None))
                                      and callable(getattr(optimizer, "update", None))):
        raise TypeError(
            "optimizer must be an optax.GradientTransformation (e.g. optax.adam(1e-3)), "
            f"got {type(optimizer).__name__}"
        )
    return checks.integer(start_epoch, "start_epoch", 0, epochs, f"epochs={epochs}")


class Epochs:
    """A training loop's epochs: ``start`` (params, opt_state) and a call per epoch."""

    def __init__(self, start, run):
        self.start, self._run = start, run

    def __call__(self, e, params, opt_state):
        return self._run(e, params, opt_state)


def _one_device(model, params, opt_state, X, Y, key, alpha, source, optimizer, batch_size,
                skip_nonfinite, shuffle):
    # each epoch donates its input buffers: keep the caller's arrays alive
    start = jax.tree.map(jnp.copy, (params, opt_state))
    alpha = jnp.asarray(alpha, jax.tree.leaves(params)[0].dtype)

    def run(e, params, opt_state):
        return run_epoch(params, opt_state, X, Y, jax.random.fold_in(key, e), alpha,
                         model=model, source=source, optimizer=optimizer,
                         batch_size=batch_size, skip_nonfinite=skip_nonfinite,
                         shuffle=shuffle)

    return Epochs(start, run), (lambda tree: tree)


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


def check_opt_state(opt_state, params, optimizer) -> None:
    """Raise ValueError unless opt_state has the structure, shapes and dtypes of the
    state ``init_state(params, optimizer)`` would make."""
    expected = jax.eval_shape(lambda p: init_state(p, optimizer), params)
    got_paths, got_def = jax.tree_util.tree_flatten_with_path(opt_state)
    want_paths, want_def = jax.tree_util.tree_flatten_with_path(expected)
    if got_def != want_def:
        got_names = [jax.tree_util.keystr(p) for p, _ in got_paths]
        want_names = [jax.tree_util.keystr(p) for p, _ in want_paths]
        missing = [n for n in want_names if n not in got_names][:3]
        extra = [n for n in got_names if n not in want_names][:3]
        raise ValueError(
            "opt_state does not fit the optimiser: "
            + (f"missing leaves {missing}, unexpected leaves {extra}" if missing or extra
               else f"expected the structure {want_def}, got {got_def}")
        )
    for (path, got), (_, want) in zip(got_paths, want_paths, strict=True):
        shape, dtype = np.shape(got), jnp.result_type(got)
        if shape != want.shape or dtype != want.dtype:
            raise ValueError(
                f"opt_state{jax.tree_util.keystr(path)}: expected {want.dtype}{list(want.shape)}, "
                f"got {dtype}{list(shape)}"
            )


def _start_history(history: dict | None, start_epoch: int) -> dict[str, list]:
    if history is None:
        if start_epoch:
            raise ValueError(
                f"resuming at start_epoch={start_epoch} needs the history of the epochs before"
            )
        return {"loss": [], "accuracy": []}
    if not isinstance(history, dict) or set(history) != {"loss", "accuracy"}:
        raise ValueError(f"history must be a dict with keys 'loss' and 'accuracy', got {history!r}")
    lengths = {name: len(values) for name, values in history.items()}
    if set(lengths.values()) != {start_epoch}:
        raise ValueError(
            f"history must hold the {start_epoch} epochs before start_epoch, got lengths {lengths}"
        )
    return {name: list(values) for name, values in history.items()}
