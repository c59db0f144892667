"""What every experiment script shares: command line, run folder, results.json, plots, tables.

An experiment is ``python -m experiments.NAME [options]``. Each run writes
``runs/NAME/<timestamp or --out>/`` holding ``results.json`` (configuration, metrics,
timings, jax version, device) and PNG plots. A run never overwrites an earlier run's
folder unless ``--overwrite`` is given, and every file it writes stays inside that
folder.
"""

import argparse
import datetime
import json
import math
import os
import platform
import re
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

DEVICES = ("cpu", "gpu", "tpu")


def parser(name: str, doc: str | None) -> argparse.ArgumentParser:
    """An argument parser with the options every experiment takes.

    --seed, --dtype, --device, --out, --runs-dir, --overwrite, --smoke, --no-progress.
    Scripts add their own (epochs, learning rate, gradient source, data path).
    """
    p = argparse.ArgumentParser(
        prog=f"python -m experiments.{name}",
        description=(doc or "").strip().split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--seed", type=int, default=0, help="PRNG seed for init, data and shuffles")
    p.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    p.add_argument("--device", choices=DEVICES, default=None,
                   help="backend to run on (default: JAX's default backend)")
    p.add_argument("--out", default=None,
                   help="name of the run folder under runs/NAME/ (default: a timestamp)")
    p.add_argument("--runs-dir", default="runs", help="folder holding all runs")
    p.add_argument("--overwrite", action="store_true",
                   help="allow writing into an existing run folder")
    p.add_argument("--smoke", action="store_true",
                   help="a few steps only: checks the script end to end")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.add_argument("--system-malloc", action="store_true",
                   help="leave glibc's malloc as it is (see common.retain_freed_memory)")
    return p


def add_training_args(p: argparse.ArgumentParser, *, epochs: int, alpha: float,
                      batch_size: int) -> None:
    """--epochs, --alpha (learning rate), --batch-size, --source (manual/autodiff/both)."""
    p.add_argument("--epochs", type=int, default=epochs)
    p.add_argument("--alpha", "--lr", dest="alpha", type=float, default=alpha,
                   help="learning rate of the explicit SGD update")
    p.add_argument("--batch-size", type=int, default=batch_size)
    p.add_argument("--source", choices=("manual", "autodiff", "both"), default="both",
                   help="gradient source: hand-written δ recursion, jax.grad, or both")


def retain_freed_memory() -> bool:
    """Make glibc's malloc keep freed memory for reuse instead of returning it to the OS.

    XLA's CPU runtime allocates a compiled program's temporaries as one block per call.
    glibc serves a block larger than its largest mmap threshold (32 MiB) with mmap and
    unmaps it when it is freed, so every call of a compiled CNN training step faulted its
    temporaries in afresh: cnn_color's manual step took 15 000 minor page faults (58 MiB)
    and 44 ms per call, 20.8 ms without them (``experiments.benchmark`` reports the faults).
    M_MMAP_MAX = 0 (no mmap'd blocks), M_TRIM_THRESHOLD = 1 GiB (no trimming of the heap's
    top) and M_ARENA_MAX = 1 (one heap; worker threads would otherwise map heaps of their
    own, which are unmapped likewise) keep freed blocks for the next call. Peak memory is
    unchanged; memory freed at the end is kept by the process until it exits.

    Call before JAX starts its threads. Returns whether it applied (False without glibc).
    """
    import ctypes
    import platform

    if platform.libc_ver()[0] != "glibc":
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_max, m_arena_max = -1, -4, -8
    return all(mallopt(option, value) == 1 for option, value in (
        (m_mmap_max, 0), (m_trim_threshold, 2**30), (m_arena_max, 1)))


def setup(args: argparse.Namespace) -> None:
    """Apply --dtype and --device before any array is made (must run before JAX work).

    Also keeps freed memory for reuse (``retain_freed_memory``) unless --system-malloc.
    """
    if not getattr(args, "system_malloc", True):
        retain_freed_memory()
    import jax

    if args.dtype == "float64":
        jax.config.update("jax_enable_x64", True)
    if args.device is not None:
        try:
            devices = jax.devices(args.device)
        except RuntimeError as e:
            raise SystemExit(f"--device {args.device}: no such backend here ({e})") from None
        jax.config.update("jax_default_device", devices[0])


def dtype_of(args: argparse.Namespace):
    """The numpy dtype named by --dtype."""
    return np.float64 if args.dtype == "float64" else np.float32


_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")  # fullmatch: "$" admits "\n"


def safe_name(name: str, what: str = "run name") -> str:
    """A single path component of letters, digits, '.', '_', '-'; else ValueError.

    Keeps every file of a run inside the folder the user chose: no '/', no '..'.
    """
    if not isinstance(name, str) or not _NAME.fullmatch(name) or name in (".", ".."):
        raise ValueError(
            f"{what} must be letters, digits, '.', '_' or '-' (no path separators), "
            f"got {name!r}"
        )
    return name


def run_dir(args: argparse.Namespace, name: str) -> Path:
    """Create and return runs_dir/name/<out or timestamp>/.

    An existing folder is refused unless --overwrite, or --resume (``add_checkpoint_args``),
    which needs --out to name the run to continue; a timestamp that already exists gets a
    numeric suffix.
    """
    base = Path(args.runs_dir) / safe_name(name, "experiment name")
    resume = getattr(args, "resume", False)
    if resume and args.out is None:
        raise SystemExit("--resume needs --out NAME, the run folder to continue")
    if args.out is not None:
        path = base / safe_name(args.out)
        if path.exists() and not (args.overwrite or resume):
            raise SystemExit(f"{path} exists; choose another --out or pass --overwrite")
    else:
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        path, i = base / stamp, 1
        while path.exists():
            path, i = base / f"{stamp}-{i}", i + 1
    path.mkdir(parents=True, exist_ok=True)
    return path


def inside(folder: Path, filename: str) -> Path:
    """folder/filename, refusing names that would leave folder."""
    return Path(folder) / safe_name(filename, "file name")


def environment() -> dict:
    """jax version, backend, devices, Python and machine: recorded in every results.json."""
    import jax

    return {
        "jax": jax.__version__,
        "backend": jax.default_backend(),
        "devices": [str(d) for d in jax.devices()],
        "device_kind": jax.devices()[0].device_kind,
        "x64": bool(jax.config.jax_enable_x64),
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "argv": sys.argv,
    }


def to_jsonable(x):
    """Arrays, numpy scalars, tuples and non-finite floats made JSON-safe (NaN -> null)."""
    if isinstance(x, dict):
        return {str(k): to_jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [to_jsonable(v) for v in x]
    if hasattr(x, "tolist"):
        return to_jsonable(x.tolist())
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, (str, int, float, bool)) or x is None:
        return x
    return str(x)


def write_json(path: Path, data: dict) -> Path:
    """Write JSON atomically (``jaxnn.checkpoint.write_atomic``: temporary file, fsync,
    rename)."""
    from jaxnn.checkpoint import write_atomic

    path = Path(path)
    data = to_jsonable(data)
    write_atomic(path, lambda f: json.dump(data, f, indent=2, allow_nan=False), mode="w")
    return path


def save_results(folder: Path, args: argparse.Namespace, results: dict) -> Path:
    """folder/results.json with {"config": vars(args), "environment": ..., **results}."""
    return write_json(Path(folder) / "results.json",
                      {"config": vars(args), "environment": environment(), **results})


def pyplot():
    """matplotlib.pyplot with the non-interactive Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, folder: Path, filename: str) -> Path:
    """Save a figure as PNG inside the run folder and close it."""
    path = inside(folder, filename)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    pyplot().close(fig)
    return path


def progress(iterable, args: argparse.Namespace, **kwargs):
    """A tqdm progress bar (to stderr), unless --no-progress."""
    from tqdm.auto import tqdm

    return tqdm(iterable, disable=args.no_progress, **kwargs)


def table(rows: Sequence[dict], columns: Sequence[str] | None = None) -> str:
    """A plain-text table from a list of dicts; floats in compact scientific/fixed form."""
    rows = list(rows)
    if not rows:
        return "(no rows)"
    columns = list(columns or rows[0].keys())

    def fmt(v):
        if isinstance(v, float):
            if v != 0 and (abs(v) < 1e-3 or abs(v) >= 1e5):
                return f"{v:.2e}"
            return f"{v:.4f}"
        return str(v)

    cells = [[fmt(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    line = "  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True))
    rule = "  ".join("-" * w for w in widths)
    body = ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join([line, rule, *body])


class Timer:
    """Wall-clock seconds of a with-block: ``with Timer() as t: ...; t.seconds``."""

    def __enter__(self):
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.start


def epoch_progress(args: argparse.Namespace, epochs: int, desc: str, then=None):
    """A tqdm bar over epochs and an ``on_epoch`` callback for ``jaxnn.sgd.train`` advancing it.

    The callback moves the bar on by one epoch, shows that epoch's mean loss, and then
    calls ``then(epoch, params, opt_state, history)`` when given. Use the bar as a
    context manager around training: ``with bar: sgd.train(..., on_epoch=callback)``.
    """
    bar = progress(None, args, total=epochs, desc=desc, unit="epoch")

    def on_epoch(epoch, params, opt_state, history):
        bar.update(1)
        bar.set_postfix(loss=f"{history['loss'][-1]:.4g}", refresh=False)
        if then is not None:
            then(epoch, params, opt_state, history)

    return bar, on_epoch


def tree_difference(a, b) -> dict:
    """How far apart two parameter pytrees of one structure are, over all leaves.

    Returns {"max_abs": max |a - b|,
             "max_rel": max over leaves of max |a - b| / max(|a|, |b|) of that leaf
                        (the difference relative to the leaf's scale),
             "max_rel_elementwise": max of |a - b| / max(|a|, |b|, tiny) element by
                        element, 0 where a == b (as ``jaxnn.gradcheck.relative_error``;
                        entries near 0 dominate it)}.
    Computed with numpy on the host, so that comparing many snapshots compiles nothing.
    """
    import jax

    if jax.tree.structure(a) != jax.tree.structure(b):
        raise ValueError(
            f"trees differ in structure: {jax.tree.structure(a)} vs {jax.tree.structure(b)}"
        )
    max_abs = max_rel = max_elementwise = 0.0
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        x, y = np.asarray(x), np.asarray(y)
        tiny = float(np.finfo(np.result_type(x, y)).tiny)
        x, y = x.astype(np.float64), y.astype(np.float64)
        d = np.abs(x - y)
        magnitude = np.maximum(np.abs(x), np.abs(y))
        scale = float(np.max(magnitude, initial=0.0))
        max_abs = max(max_abs, float(np.max(d, initial=0.0)))
        max_rel = max(max_rel, float(np.max(d, initial=0.0)) / scale if scale > 0 else 0.0)
        elementwise = np.where(x == y, 0.0, d / np.maximum(magnitude, tiny))
        max_elementwise = max(max_elementwise, float(np.max(elementwise, initial=0.0)))
    return {"max_abs": max_abs, "max_rel": max_rel, "max_rel_elementwise": max_elementwise}


def check_training_args(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Exit with a usage error unless --epochs >= 1, --alpha is finite and > 0 and
    --batch-size >= 1 (options of ``add_training_args``)."""
    if args.epochs < 1:
        p.error(f"--epochs must be >= 1, got {args.epochs}")
    if not (math.isfinite(args.alpha) and args.alpha > 0):
        p.error(f"--alpha must be finite and > 0, got {args.alpha}")
    if args.batch_size < 1:
        p.error(f"--batch-size must be >= 1, got {args.batch_size}")


def time_samples(fns: dict, repeats: int, *, warmup: int = 1, number: int = 1) -> dict:
    """Wall-clock seconds per call of zero-argument functions, timed interleaved.

    Each function runs ``warmup`` times untimed (compilation, caches), then the functions
    take turns: repeat r times every function once (``number`` calls, each waited for with
    ``jax.block_until_ready``), starting from a different function each repeat, so a slow
    moment of a shared machine hits all of them alike rather than one.

    Returns {name: [seconds per call, one per repeat]}.
    """
    import jax

    names = list(fns)
    for name in names:
        for _ in range(warmup):
            jax.block_until_ready(fns[name]())
    samples: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        shift = r % len(names) if names else 0
        for name in names[shift:] + names[:shift]:
            start = time.perf_counter()
            for _ in range(number):
                jax.block_until_ready(fns[name]())
            samples[name].append((time.perf_counter() - start) / number)
    return samples


def time_interleaved(fns: dict, repeats: int = 7, *, warmup: int = 1, number: int = 1) -> dict:
    """{name: median seconds per call} of ``time_samples`` (interleaved repeats)."""
    samples = time_samples(fns, repeats, warmup=warmup, number=number)
    return {name: float(np.median(s)) for name, s in samples.items()}


def timed_compile(jitted, *args, **kwargs):
    """Lower and compile ``jitted`` for these arguments, apart from any run.

    Returns (compiled, seconds): the ``jax.stages.Compiled`` and the wall-clock seconds
    of tracing, lowering and XLA compilation together.
    """
    start = time.perf_counter()
    compiled = jitted.lower(*args, **kwargs).compile()
    return compiled, time.perf_counter() - start


def xla_cost(compiled) -> dict:
    """XLA's estimate for a compiled function: {"flops", "bytes_accessed", "transcendentals"}.

    ``cost_analysis()`` returns a dict, or a list of dicts (one per program) in some
    versions and backends; the list is summed. Missing entries are NaN.
    """
    analysis = compiled.cost_analysis()
    if isinstance(analysis, dict) or analysis is None:
        analysis = [analysis or {}]
    out = {}
    for key, name in (("flops", "flops"), ("bytes accessed", "bytes_accessed"),
                      ("transcendentals", "transcendentals")):
        values = [float(a[key]) for a in analysis if a and key in a]
        out[name] = float(sum(values)) if values else float("nan")
    return out


_HLO_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%?[\w.\-]+ = (.*)$")
_HLO_OPCODE = re.compile(r"^(?:\((?:[^()]|\([^()]*\))*\)|\S+)\s+([a-z][a-z0-9\-]*)\(")


def hlo_ops(compiled_or_text) -> dict:
    """Instruction counts of an (optimised) HLO module, from ``compiled.as_text()``.

    Returns {"total": instructions in all computations (fused bodies included),
    "entry": instructions of the entry computation (the kernels and calls the program
    runs), "by_opcode": {opcode: count over all computations}}.
    """
    text = compiled_or_text if isinstance(compiled_or_text, str) else compiled_or_text.as_text()
    by_opcode: dict[str, int] = {}
    total = entry = 0
    in_entry = False
    for line in text.splitlines():
        if line.startswith("ENTRY"):
            in_entry = True
            continue
        if line.startswith("}"):
            in_entry = False
            continue
        match = _HLO_INSTRUCTION.match(line)
        if not match:
            continue
        opcode_match = _HLO_OPCODE.match(match.group(1))
        opcode = opcode_match.group(1) if opcode_match else "?"
        by_opcode[opcode] = by_opcode.get(opcode, 0) + 1
        total += 1
        entry += in_entry
    return {"total": total, "entry": entry, "by_opcode": dict(sorted(by_opcode.items()))}


def add_checkpoint_args(p: argparse.ArgumentParser) -> None:
    """--checkpoint-every N, --keep-checkpoints K and --resume, for ``train_with_checkpoints``."""
    p.add_argument("--checkpoint-every", type=int, default=0, metavar="N",
                   help="save the whole training state every N epochs and after the last, "
                        "under <run folder>/checkpoints/ (0: no checkpoints)")
    p.add_argument("--keep-checkpoints", type=int, default=3, metavar="K",
                   help="how many of the newest checkpoints to keep")
    p.add_argument("--resume", action="store_true",
                   help="continue the run named by --out from its newest valid checkpoint")


def train_with_checkpoints(args: argparse.Namespace, folder: Path, model, params, X, Y, *,
                           key, tag: str = "train", **train_kwargs):
    """``jaxnn.sgd.train``, checkpointed and resumable as --checkpoint-every/--resume ask.

    Without either option this is ``sgd.train(model, params, X, Y, key=key,
    **train_kwargs)``. Otherwise it is ``jaxnn.checkpoint.train`` with the checkpoints of
    this training run in folder/checkpoints/<tag>/ (one tag per training run of a script,
    e.g. the gradient source; letters, digits, '.', '_', '-'): a checkpoint every N
    epochs and after the last one, the newest K kept; with --resume, training continues
    from the newest valid checkpoint there, on the uninterrupted run's trajectory, and
    without it a folder already holding checkpoints is refused unless --overwrite (whose
    old checkpoints are then removed). Resume events and skipped files are printed to
    stderr. Returns (params, history) as ``sgd.train``.
    """
    from jaxnn import checkpoint, sgd

    every = getattr(args, "checkpoint_every", 0)
    resume = getattr(args, "resume", False)
    keep = getattr(args, "keep_checkpoints", 3)
    if every < 0 or keep < 1:
        raise SystemExit(f"--checkpoint-every must be >= 0 and --keep-checkpoints >= 1, "
                         f"got {every} and {keep}")
    if not every and not resume:
        return sgd.train(model, params, X, Y, key=key, **train_kwargs)
    where = Path(folder) / "checkpoints" / safe_name(tag, "checkpoint tag")
    if not resume and args.overwrite:
        for _, path in checkpoint.list_checkpoints(where):
            path.unlink()
    epochs = train_kwargs.pop("epochs")
    return checkpoint.train(
        model, params, X, Y, folder=where, key=key, epochs=epochs,
        every=every if every > 0 else max(epochs, 1), keep=keep, resume=resume,
        log=lambda line: print(line, file=sys.stderr, flush=True), **train_kwargs)


def train_recorded(model, params, split, key, args: argparse.Namespace, *, source: str,
                   epochs: int, alpha: float, batch_size: int, desc: str,
                   snapshots: bool = False, folder: Path | None = None, tag: str | None = None):
    """``jaxnn.sgd.train`` on a ``jaxnn.data.Split`` with a progress bar, recording the test
    accuracy (and, with ``snapshots``, a host copy of the parameters) after every epoch.

    Returns (params, record) with record {"loss", "train_accuracy", "test_accuracy":
    one value per epoch, "seconds": wall time including compilation, "snapshots": list of
    parameter pytrees (empty unless asked for)}. With a run ``folder``, training goes
    through ``train_with_checkpoints`` (--checkpoint-every, --resume) with checkpoints
    under folder/checkpoints/<tag or source>/; a resumed run records test accuracy for
    the epochs it ran. Training starts from a copy of
    ``params``: ``sgd.train`` donates its parameter buffers on GPU/TPU, and the caller's
    arrays (say, one initialisation trained twice) must survive that.
    """
    import jax
    import jax.numpy as jnp

    from jaxnn import sgd

    params = jax.tree.map(jnp.copy, params)

    X_test, y_test = jnp.asarray(split.X_test), jnp.asarray(split.y_test)
    accuracy = jax.jit(model.accuracy)
    record = {"test_accuracy": [], "snapshots": []}

    def after_epoch(epoch, params, opt_state, history):
        record["test_accuracy"].append(float(accuracy(params, X_test, y_test)))
        if snapshots:
            record["snapshots"].append(jax.device_get(params))

    bar, on_epoch = epoch_progress(args, epochs, desc, then=after_epoch)
    X_train, y_train = jnp.asarray(split.X_train), jnp.asarray(split.y_train)
    kwargs = dict(alpha=alpha, epochs=epochs, batch_size=batch_size, source=source,
                  on_epoch=on_epoch)
    with Timer() as t, bar:
        if folder is None:
            params, history = sgd.train(model, params, X_train, y_train, key=key, **kwargs)
        else:
            params, history = train_with_checkpoints(
                args, folder, model, params, X_train, y_train, key=key, tag=tag or source,
                **kwargs)
    missing = len(history["loss"]) - len(record["test_accuracy"])  # epochs before a resume
    record["test_accuracy"] = [float("nan")] * missing + record["test_accuracy"]
    if missing and history["loss"]:
        record["test_accuracy"][-1] = float(accuracy(params, X_test, y_test))
    record.update(loss=history["loss"], train_accuracy=history["accuracy"], seconds=t.seconds)
    return params, record
