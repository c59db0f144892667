"""The one training loop: minibatch gradient descent (or an optax optimiser), epoch by epoch.

``train`` runs the epochs of ``jaxnn.gradient_descent`` (the step
W^[l] <- W^[l] - α ∂L/∂W^[l], an epoch as one ``lax.scan``, the non-finite guard) on one
device, or data parallel over a ``jax.sharding.Mesh`` (``mesh=``, from
``jaxnn.parallel.make_mesh``), saving a checkpoint every few epochs and resuming from
the newest valid one (``checkpoints=``, a ``jaxnn.checkpoint.Checkpoints``). The step's
names are reached here too: ``sgd.update``, ``sgd.make_step``, ``sgd.run_epoch``,
``sgd.batch_indices``, ...
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

from jaxnn import checks, parallel
from jaxnn.gradient_descent import (  # noqa: F401 - also reached as sgd.<name>
    SOURCES,
    Epochs,
    NonFiniteError,
    all_finite,
    batch_indices,
    descends,
    donated,
    epoch_donating,
    finish_epoch,
    gradient,
    guarded_step,
    init_state,
    make_step,
    run_epoch,
    step,
    update,
)


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
