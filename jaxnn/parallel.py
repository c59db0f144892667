"""Data-parallel training over many devices and many hosts, with ``jax.sharding``.

One mesh axis, ``"data"``, runs over every device of every process. Each minibatch of
B examples is split along its example axis, so each of the D devices holds B / D
examples (``NamedSharding(mesh, P("data"))``). The parameters, the optimiser state and
the learning rate are replicated: every device holds all of them (``P()``).

The training step is ``gradient_descent.step`` (forward, manual or autodiff gradient, explicit
update ``gradient_descent.update`` or an optax one, or the in-place ``jaxnn.fast.descent`` where
``gradient_descent.descends``), unchanged, compiled by ``jax.jit`` with these
input and output shardings. Because the model's loss and gradient are means over the
batch, (1/B) Σ_i, each device computes its part of the sum and XLA inserts the
all-reduce that adds the parts: the gradient is the whole batch's, as on one device,
up to the order of the floating-point additions. Nothing else changes; the update
runs on every device on identical numbers, so the replicas stay identical.

An epoch is a ``lax.scan`` over minibatches as in ``gradient_descent.run_epoch``. The permutation is
``gradient_descent.batch_indices(fold_in(key, e), m, B)``, the one drawn on one device, so
``sgd.train(..., mesh=mesh)`` follows the single-device data order exactly and its
parameters equal one device's up to rounding.

The divisibility rule: the batch size B must be a multiple of the size of the
``"data"`` axis (the number of devices); otherwise ``ValueError``.

Optionally a second axis, ``"model"`` (``make_mesh(model=k)``): weight matrices of at
least ``min_shard_size`` elements, and their optimiser state, are split by rows over it
(:func:`param_sharding`), so each of the k devices holds some of a layer's units; the
compiler adds the all-gathers this needs. Everything else stays replicated.

Many hosts: call :func:`initialize` first in every process (it wraps
``jax.distributed.initialize``); ``jax.devices()`` then lists every process's devices
and the same code runs. Each process reads only the rows of each minibatch that its
own devices hold (:func:`gather`, built on ``jax.make_array_from_process_local_data``)
and every process runs the same program (SPMD).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib
import os
import re
import signal
import sys
import traceback
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxnn import checks
from jaxnn import gradient_descent as gd

DATA = "data"
MODEL = "model"

__all__ = [
    "DATA",
    "MODEL",
    "assert_same_everywhere",
    "check_batch_size",
    "exit_on_error",
    "gather",
    "initialize",
    "is_main_process",
    "local_copy",
    "local_positions",
    "make_mesh",
    "make_step",
    "param_sharding",
    "place",
    "replicate",
    "replicated",
    "run_epoch",
    "sharded",
    "epochs",
]


# ------------------------------------------------------------------------------ mesh


def make_mesh(devices: Sequence[jax.Device] | None = None, model: int = 1) -> Mesh:
    """A mesh over ``devices`` (default: ``jax.devices()``, all processes' devices).

    With ``model=1`` (the default) one axis, ``("data",)``, of all D devices. With
    ``model=k > 1`` two axes, ``("data", "model")`` of sizes (D / k, k): minibatches are
    split over "data", and :func:`param_sharding` splits large weight matrices over
    "model". The axis types are ``Auto``: the compiler places the collectives (the
    gradient's all-reduce) itself.
    """
    devices = jax.devices() if devices is None else list(devices)
    if not devices:
        raise ValueError("a mesh needs at least one device")
    checks.integer(model, "model", 1)
    if len(devices) % model:
        raise ValueError(f"model={model} does not divide the {len(devices)} devices")
    if model == 1:
        return jax.make_mesh((len(devices),), (DATA,), axis_types=(AxisType.Auto,),
                             devices=devices)
    return jax.make_mesh((len(devices) // model, model), (DATA, MODEL),
                         axis_types=(AxisType.Auto,) * 2, devices=devices)


def replicated(mesh: Mesh) -> NamedSharding:
    """Every device holds the whole array: ``NamedSharding(mesh, P())``."""
    return NamedSharding(mesh, P())


def sharded(mesh: Mesh, axis: int = 0) -> NamedSharding:
    """Split along array axis ``axis`` over the ``"data"`` devices (``P("data")`` for
    axis 0, ``P(None, "data")`` for axis 1: a stack of minibatches)."""
    return NamedSharding(mesh, P(*([None] * axis), DATA))


def check_batch_size(batch_size: int, mesh: Mesh) -> None:
    """Raise ValueError unless ``batch_size`` is a multiple of the ``"data"`` axis size."""
    D = mesh.shape[DATA]
    if batch_size % D:
        raise ValueError(
            f"batch_size {batch_size} is not divisible by the {D} devices of the "
            f"'{DATA}' mesh axis: each device must get the same number of examples; "
            f"use a multiple of {D} (e.g. {max(D, batch_size // D * D)})"
        )


# ------------------------------------------------------------- placing arrays on a mesh


def param_sharding(tree, mesh: Mesh, min_size: int = 2**16):
    """Shardings for parameters (or optimiser state): replicated, or rows over "model".

    A 2-D leaf (a weight matrix W^[l], (n_l, n_{l-1}), or its momentum) with at least
    ``min_size`` elements whose n_l the "model" axis size divides is split by rows,
    ``P("model", None)``: each "model" device holds some of layer l's units. Every
    other leaf, and every leaf on a mesh without a "model" axis, is replicated.
    Returns a pytree of ``NamedSharding`` shaped like ``tree``.
    """
    k = mesh.shape.get(MODEL, 1)

    def one(x):
        shape = np.shape(x)
        if k > 1 and len(shape) == 2 and np.prod(shape) >= min_size and shape[0] % k == 0:
            return NamedSharding(mesh, P(MODEL, None))
        return replicated(mesh)

    return jax.tree.map(one, tree)


def place(tree, shardings):
    """Put each leaf of ``tree`` on the mesh with its sharding (a pytree like ``tree``,
    or one sharding for all).

    Leaves are host or device arrays with the same values in every process (e.g.
    parameters from the same ``init`` key); each device takes its part. Works with
    one process or many.
    """
    if isinstance(shardings, jax.sharding.Sharding):
        shardings = jax.tree.map(lambda _: shardings, tree)

    def one(x, sharding):
        x = np.asarray(x)
        return jax.make_array_from_process_local_data(sharding, x, x.shape)

    return jax.tree.map(one, tree, shardings)


def replicate(tree, mesh: Mesh):
    """Put every leaf of ``tree`` on every device of ``mesh`` (sharding ``P()``)."""
    return place(tree, replicated(mesh))


def local_copy(tree):
    """Arrays on the mesh as whole arrays on one device of this process.

    For work that needs no other device: evaluating with the trained parameters,
    saving them, comparing them. A leaf split over devices of other processes is
    all-gathered, so with many processes every process must call this together.
    """
    def one(x):
        if not isinstance(x, jax.Array) or len(x.sharding.device_set) == 1:
            return x
        if x.is_fully_replicated:
            return x.addressable_data(0)
        if x.is_fully_addressable:
            return jax.device_put(x, x.addressable_shards[0].device)
        from jax.experimental import multihost_utils

        return jax.device_put(multihost_utils.process_allgather(x, tiled=True),
                              x.addressable_shards[0].device)

    return jax.tree.map(one, tree)


def local_positions(sharding: NamedSharding, global_shape: tuple[int, ...],
                    axis: int) -> np.ndarray:
    """Positions along ``axis`` of the global array that this process's devices hold.

    In the order ``jax.make_array_from_process_local_data`` expects them in the local
    array: the addressable shards sorted by their start, each shard's positions in
    order. With one process: ``arange(global_shape[axis])``.
    """
    starts, size = set(), None
    for index in sharding.addressable_devices_indices_map(global_shape).values():
        s = index[axis]
        start = s.start or 0
        stop = global_shape[axis] if s.stop is None else s.stop
        starts.add(start)
        size = stop - start
    return np.concatenate([np.arange(s, s + size) for s in sorted(starts)])


def gather(X, idx, mesh: Mesh) -> jax.Array:
    """The rows ``X[idx]`` as one global array, split over ``"data"`` along idx's last axis.

    Args:
      X: the examples, (m, ...): a numpy array, a memory map or anything indexable by
        an integer array; the same in every process.
      idx: integer rows, (B,) for one minibatch or (n_batches, B) for an epoch; the
        same in every process.
      mesh: the mesh; B must be divisible by its ``"data"`` size.
    Returns:
      A ``jax.Array`` of shape ``idx.shape + X.shape[1:]``, sharded ``P("data")``
      (1-D idx) or ``P(None, "data")`` (2-D idx). Each process reads only
      ``X[idx[..., local]]``, the rows its own devices hold, and hands them to
      ``jax.make_array_from_process_local_data``.
    """
    idx = np.asarray(idx)
    if idx.ndim not in (1, 2) or not np.issubdtype(idx.dtype, np.integer):
        raise ValueError(f"idx must be 1-D or 2-D integers, got {idx.dtype} {idx.shape}")
    check_batch_size(idx.shape[-1], mesh)
    axis = idx.ndim - 1
    sharding = sharded(mesh, axis)
    global_shape = idx.shape + tuple(np.shape(X)[1:])
    local = idx[..., local_positions(sharding, global_shape, axis)]
    return jax.make_array_from_process_local_data(sharding, np.asarray(X[local]), global_shape)


# -------------------------------------------------------------------- step and epoch


def _layout(tree) -> tuple:
    """(treedef, specs of the leaves): hashable, for caching compiled functions."""
    leaves, treedef = jax.tree.flatten(tree)

    def spec(x):
        sharding = getattr(x, "sharding", None)
        return sharding.spec if isinstance(sharding, NamedSharding) else P()

    return treedef, tuple(spec(x) for x in leaves)


def _shardings(mesh: Mesh, layout: tuple):
    treedef, specs = layout
    return jax.tree.unflatten(treedef, [NamedSharding(mesh, s) for s in specs])


def _donate() -> tuple[int, ...]:
    return (0, 1) if gd.donated() else ()


def _step(params, opt_state, X, Y, alpha, model, source, optimizer):
    params, opt_state, loss, _ = gd.step(params, opt_state, X, Y, alpha, model, source,
                                         optimizer, bool(gd.donated()))
    return params, opt_state, loss


@functools.lru_cache(maxsize=64)
def _compiled_step(mesh: Mesh, donate: tuple[int, ...], params_layout, state_layout):
    # Static (model, source, optimizer) are positional: jit refuses keyword arguments
    # together with in_shardings.
    rep, batch = replicated(mesh), sharded(mesh)
    p, o = _shardings(mesh, params_layout), _shardings(mesh, state_layout)
    return jax.jit(_step, static_argnums=(5, 6, 7), in_shardings=(p, o, batch, batch, rep),
                   out_shardings=(p, o, rep), donate_argnums=donate)


def make_step(model, source: str = "manual",
              optimizer: optax.GradientTransformation | None = None,
              mesh: Mesh | None = None) -> Callable:
    """``gradient_descent.make_step`` on a mesh: ``step(params, opt_state, X, Y, alpha)``.

    Returns ``(params, opt_state, loss)``. In- and out-shardings: params and opt_state
    keep the shardings they come with (:func:`replicate`, or :func:`place` with
    :func:`param_sharding`); X (B, ...) and Y (B, ...) split along B over "data"
    (build them with :func:`gather`); alpha and loss replicated. B must be divisible
    by the "data" size. Compiled once per (shardings, shapes, dtypes).
    """
    gd.gradient(model, source)
    mesh = make_mesh() if mesh is None else mesh

    def step(params, opt_state, X, Y, alpha):
        fn = _compiled_step(mesh, _donate(), _layout(params), _layout(opt_state))
        return fn(params, opt_state, X, Y, alpha, model, source, optimizer)

    return step


def _epoch(params, opt_state, Xb, Yb, alpha, model, source, optimizer, batch_sharding,
           skip_nonfinite):
    def body(carry, step_and_batch):
        i, X, Y = step_and_batch
        X = jax.lax.with_sharding_constraint(X, batch_sharding)
        Y = jax.lax.with_sharding_constraint(Y, batch_sharding)
        return gd.guarded_step(carry, i, X, Y, alpha, model, source, optimizer,
                               skip_nonfinite)

    steps = jnp.arange(Xb.shape[0], dtype=jnp.int32)
    (params, opt_state, bad), losses = jax.lax.scan(
        body, (params, opt_state, jnp.int32(-1)), (steps, Xb, Yb))
    return params, opt_state, losses, bad


@functools.lru_cache(maxsize=64)
def _compiled_epoch(mesh: Mesh, donate: tuple[int, ...], params_layout, state_layout):
    rep, batches = replicated(mesh), sharded(mesh, axis=1)
    p, o = _shardings(mesh, params_layout), _shardings(mesh, state_layout)
    return jax.jit(_epoch, static_argnums=(5, 6, 7, 8, 9),
                   in_shardings=(p, o, batches, batches, rep),
                   out_shardings=(p, o, rep, rep), donate_argnums=donate)


def run_epoch(params, opt_state, Xb, Yb, alpha, *, model, source: str,
              optimizer: optax.GradientTransformation | None, mesh: Mesh,
              skip_nonfinite: bool = True):
    """One epoch on the mesh as one compiled ``lax.scan`` over the minibatches.

    Args:
      params, opt_state: on the mesh (:func:`replicate`, or :func:`place` with
        :func:`param_sharding`); they keep their shardings. alpha: replicated.
      Xb, Yb: the epoch's minibatches, (n_batches, B, ...), split along B
        (:func:`gather` with idx of shape (n_batches, B)).
    Returns:
      (params, opt_state, losses (n_batches,), first bad step or -1); as
      ``gradient_descent.run_epoch``, including the skip of updates after a non-finite step.
      Compiled once per (model, source, optimizer, shardings, shapes, dtypes).
    """
    fn = _compiled_epoch(mesh, _donate(), _layout(params), _layout(opt_state))
    return fn(params, opt_state, Xb, Yb, alpha, model, source, optimizer, sharded(mesh),
              bool(skip_nonfinite))


# -------------------------------------------------------------------------- training


def epochs(mesh: Mesh, model, params, opt_state, X, Y, key, alpha, source, optimizer,
           batch_size: int, skip_nonfinite: bool = True, shuffle: bool = True,
           min_shard_size: int = 2**16):
    """The epochs of ``sgd.train(..., mesh=mesh)``: (``gradient_descent.Epochs``, ``local_copy``).

    Each epoch e draws ``gradient_descent.batch_indices(fold_in(key, e), m, batch_size)`` as on one
    device, cuts X and Y into those minibatches and splits each one over the "data"
    devices (each process reads only its own devices' rows). Params and optimiser
    state are placed on the mesh: replicated, or split by rows over "model" for the
    weight matrices of at least ``min_shard_size`` elements (:func:`param_sharding`).
    """
    if DATA not in mesh.axis_names:
        raise ValueError(f"mesh must have a '{DATA}' axis, got axes {mesh.axis_names}")
    check_batch_size(batch_size, mesh)
    X_host, Y_host = np.asarray(X), np.asarray(Y)
    m = X_host.shape[0]
    dtype = jax.tree.leaves(params)[0].dtype
    start = (place(params, param_sharding(params, mesh, min_shard_size)),
             place(opt_state, param_sharding(opt_state, mesh, min_shard_size)))
    alpha = replicate(np.asarray(alpha, dtype), mesh)

    def run(e, params, opt_state):
        idx = np.asarray(gd.batch_indices(jax.random.fold_in(key, e), m, batch_size, shuffle))
        return run_epoch(params, opt_state, gather(X_host, idx, mesh),
                         gather(Y_host, idx, mesh), alpha, model=model, source=source,
                         optimizer=optimizer, mesh=mesh, skip_nonfinite=skip_nonfinite)

    return gd.Epochs(start, run), local_copy


def __getattr__(name: str):
    if name == "train_parallel":  # deprecated: sgd.train(..., mesh=...) is the one loop
        import warnings

        warnings.warn("jaxnn.parallel.train_parallel(...) is sgd.train(..., mesh=mesh); "
                      "call that (mesh defaults here to make_mesh())", DeprecationWarning,
                      stacklevel=2)
        return _train_parallel
    raise AttributeError(f"module 'jaxnn.parallel' has no attribute {name!r}")


def _train_parallel(model, params, X, Y, *, mesh: Mesh | None = None, **kwargs):
    sgd = importlib.import_module("jaxnn.sgd")  # the loop builds on this module
    return sgd.train(model, params, X, Y, mesh=make_mesh() if mesh is None else mesh,
                     **kwargs)


# ------------------------------------------------------------------------ many hosts


def initialize(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    *,
    bind_address: str | None = None,
    initialization_timeout: int = 60,
    heartbeat_timeout_seconds: int = 30,
    shutdown_timeout_seconds: int = 30,
    cpu_collectives: str = "gloo",
    supervise: bool = True,
) -> None:
    """``jax.distributed.initialize`` with settings read from arguments or environment.

    Call it in every process before any other JAX work. Missing arguments come from
    ``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES``, ``JAX_PROCESS_ID`` (read here)
    and then from JAX's own cluster detection (Slurm, Open MPI, TPU pods).

    A dead peer: when a process dies, JAX's coordination service ends every other
    process by aborting it (SIGABRT, a C++ check failure with a stack trace): at once
    when the coordinator (process 0) dies, after ``heartbeat_timeout_seconds`` when
    another process dies. jax 0.10.2 offers no hook that runs instead (its
    ``missed_heartbeat_callback`` fails with ``std::bad_cast`` before calling Python).
    With ``supervise`` (the default, on POSIX, with more than one process) this
    process forks first: the child returns from here and runs the program, the parent
    only waits for it, copies its stderr without the C++ stack-trace lines, and when
    the child is aborted prints one line, ``process I of N stopped: ...``, and exits
    with status 1. Any other exit status or signal of the child is passed on as it
    is. The parent ignores Ctrl-C (the child gets it) and forwards SIGTERM and
    SIGHUP; the child is killed if the parent dies.

    Args:
      coordinator_address: "host:port" of process 0, reachable by every process.
      num_processes, process_id: the process count and this process's id in
        0 .. num_processes - 1.
      bind_address: where process 0's coordinator listens; default: exactly
        ``coordinator_address`` (JAX's own default, "[::]:port", listens on every
        interface).
      initialization_timeout: seconds to wait for every process to join.
      heartbeat_timeout_seconds: a process silent this long counts as dead, and every
        other process is stopped with an error instead of waiting forever.
      shutdown_timeout_seconds: how long an exiting process waits for the others.
      cpu_collectives: CPU collectives between processes ("gloo" over TCP, or "mpi").
      supervise: fork a parent that turns the runtime's abort into one line and exit
        status 1 (see above).
    """
    env = os.environ
    coordinator_address = coordinator_address or env.get("JAX_COORDINATOR_ADDRESS")
    if num_processes is None and env.get("JAX_NUM_PROCESSES"):
        num_processes = int(env["JAX_NUM_PROCESSES"])
    if process_id is None and env.get("JAX_PROCESS_ID"):
        process_id = int(env["JAX_PROCESS_ID"])
    if bind_address is None and coordinator_address is not None:
        bind_address = coordinator_address
    for name, value in (("initialization_timeout", initialization_timeout),
                        ("heartbeat_timeout_seconds", heartbeat_timeout_seconds),
                        ("shutdown_timeout_seconds", shutdown_timeout_seconds)):
        checks.integer(value, f"{name} (seconds)", 1)
    if supervise and (num_processes or 0) > 1 and hasattr(os, "fork"):
        _supervise(process_id, num_processes)
    jax.config.update("jax_cpu_collectives_implementation", cpu_collectives)
    jax.distributed.initialize(
        coordinator_address, num_processes, process_id,
        coordinator_bind_address=bind_address,
        initialization_timeout=initialization_timeout,
        heartbeat_timeout_seconds=heartbeat_timeout_seconds,
        shutdown_timeout_seconds=shutdown_timeout_seconds,
    )


# absl's check-failure stack trace: "*** Check failure stack trace: ***", "    @ 0x..."
_STACK_LINE = re.compile(rb"\*\*\* Check failure stack trace: \*\*\*|\s+@\s+0x[0-9a-f]+.*")


def _supervise(process_id: int | None, num_processes: int) -> None:
    """Fork; the child returns and runs the program, the parent never returns."""
    sys.stdout.flush()
    sys.stderr.flush()
    read_fd, write_fd = os.pipe()
    parent = os.getpid()
    child = os.fork()
    if child == 0:
        os.close(read_fd)
        _die_with(parent)
        os.dup2(write_fd, 2)
        os.close(write_fd)
        return
    os.close(write_fd)
    try:
        status = _wait_copying_stderr(child, read_fd)
    except BaseException:  # the supervisor itself failed: end the child with it
        os.kill(child, signal.SIGKILL)
        raise
    where = f"process {process_id} of {num_processes}"
    if os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGABRT:
        os.write(2, f"{where} stopped: the JAX distributed runtime aborted it; another "
                    "process has probably died or the coordinator is unreachable (see its "
                    "log)\n".encode())
        os._exit(1)
    if os.WIFSIGNALED(status):  # die the same way, so the caller sees the same status
        with contextlib.suppress(OSError, ValueError):  # SIGKILL, SIGSTOP: always default
            signal.signal(os.WTERMSIG(status), signal.SIG_DFL)
        os.kill(os.getpid(), os.WTERMSIG(status))
    os._exit(os.waitstatus_to_exitcode(status) if hasattr(os, "waitstatus_to_exitcode")
             else os.WEXITSTATUS(status))


def _die_with(parent: int) -> None:
    """Ask Linux to kill this process when its parent dies (no-op elsewhere)."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the parent died before prctl
        os._exit(1)


def _wait_copying_stderr(child: int, fd: int) -> int:
    """Copy the child's stderr to ours, less stack-trace lines; return its wait status."""
    import select

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the child directly
    for forwarded in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(forwarded, lambda signum, _: os.kill(child, signum))
    pending, status = b"", None
    while True:
        ready, _, _ = select.select([fd], [], [], 0.5)
        chunk = os.read(fd, 65536) if ready else b""
        if ready and not chunk:  # every writer closed it
            break
        lines = (pending + chunk).split(b"\n")
        pending = lines.pop()
        kept = [line + b"\n" for line in lines if not _STACK_LINE.fullmatch(line)]
        if kept:
            os.write(2, b"".join(kept))
        if status is None:
            done, status = os.waitpid(child, os.WNOHANG)
            status = status if done else None
        if status is not None and not ready:  # exited and nothing left to read
            break
    if pending and not _STACK_LINE.fullmatch(pending):
        os.write(2, pending)
    if status is None:
        _, status = os.waitpid(child, 0)
    return status


def is_main_process() -> bool:
    """True in process 0, the one that writes results and checkpoints."""
    return jax.process_index() == 0


def assert_same_everywhere(tree, what: str = "values") -> None:
    """Raise ValueError unless every process holds the same ``tree`` (config, initial params).

    Replicated arrays are built from each process's own copy (:func:`replicate`); copies
    that differ would give replicas that silently disagree. Each process hashes its
    tree (structure, dtypes, shapes, bytes) and the hashes are all-gathered. A no-op
    with one process.
    """
    if jax.process_count() == 1:
        return
    from jax.experimental import multihost_utils

    digest = hashlib.sha256(str(jax.tree.structure(tree)).encode())
    for leaf in jax.tree.leaves(tree):
        a = np.ascontiguousarray(np.asarray(leaf))
        digest.update(f"{a.dtype}{a.shape}".encode())
        digest.update(a.tobytes())
    mine = np.frombuffer(digest.digest()[:8], np.int32)
    everyone = np.asarray(multihost_utils.process_allgather(mine))
    differ = [i for i, h in enumerate(everyone) if not np.array_equal(h, everyone[0])]
    if differ:
        raise ValueError(f"{what} differ between processes: processes {differ} do not "
                         "match process 0 (give every process the same options and seed)")


@contextlib.contextmanager
def exit_on_error(stream=None):
    """Around a multi-process run: on an exception, report it and end this process now.

    When another process dies, the collective this process is in fails (gloo:
    "Connection closed by peer"); this prints one line, ``process I of N stopped: ...``,
    and exits with status 1 at once, instead of waiting in ``jax.distributed``'s
    shutdown barrier for the dead process. Any other exception is printed with its
    traceback first. If no collective is running, JAX's coordination service ends the
    process instead (see :func:`initialize`: one line and status 1 too, when
    supervised). With one process, the exception propagates unchanged.
    """
    try:
        yield
    except Exception as e:
        if jax.process_count() == 1:
            raise
        stream = sys.stderr if stream is None else stream
        lost_peer = isinstance(e, jax.errors.JaxRuntimeError) and any(
            word in str(e).lower() for word in ("gloo", "connection", "unavailable", "socket"))
        if not lost_peer:
            traceback.print_exc(file=stream)
        first_line = (str(e).splitlines() or [""])[0][:300]
        hint = ("a collective failed; another process has probably died (see its log): "
                if lost_peer else "")
        print(f"process {jax.process_index()} of {jax.process_count()} stopped: "
              f"{hint}{type(e).__name__}: {first_line}", file=stream, flush=True)
        os._exit(1)
