"""What every experiment script shares: command line, run folder, results.json, plots, tables.

An experiment is ``python -m experiments.NAME [options]``. Each run writes
``runs/NAME/<timestamp or --out>/`` holding ``results.json`` (configuration, metrics,
timings, jax version, device) and PNG plots. A run never overwrites an earlier run's
folder unless ``--overwrite`` is given, and every file it writes stays inside that
folder.
"""

import argparse
import datetime
import functools
import json
import math
import os
import platform
import re
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

DEVICES = ("cpu", "gpu", "tpu")


class UsageError(SystemExit):
    """A mistake on the command line, or in a file or folder it names.

    ``run`` prints it as the one line ``python -m experiments.NAME: error: MESSAGE`` and
    returns exit status 2; raised outside ``run``, Python prints MESSAGE and exits with 1.
    """

    def __init__(self, message: str):
        super().__init__(message)
        self.message = str(message)


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line (``prog: error: ...``), exit status 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


class HelpFormatter(argparse.HelpFormatter):
    """Each option's default shown once: appended unless its help already has a
    "(default ...)" of its own.

    Switches (store_true) show none; a --flag/--no-flag pair names the spelling that is
    in effect by default, so ``(default: --conv-methods)`` reads the right way round.
    """

    def _split_lines(self, text, width):
        import textwrap

        # option names and layer specs stay whole: no break after their hyphens
        return textwrap.wrap(self._whitespace_matcher.sub(" ", text).strip(), width,
                             break_on_hyphens=False)

    def _get_help_string(self, action):
        text = (action.help or "").replace(" (default: %(default)s)", "")
        if (action.default in (None, argparse.SUPPRESS) or "(default" in text
                or (action.nargs == 0 and not isinstance(action, argparse.BooleanOptionalAction))):
            return text
        if isinstance(action, argparse.BooleanOptionalAction):
            on, off = action.option_strings[0], action.option_strings[-1]
            return f"{text} (default: {on if action.default else off})"
        return f"{text} (default: %(default)s)"


def parser(name: str, doc: str | None, writes: Sequence[str] = ()) -> argparse.ArgumentParser:
    """An argument parser with the options every experiment takes.

    --seed, --dtype, --device, --out, --runs-dir, --overwrite, --smoke, --no-progress,
    --system-malloc. Scripts add their own (epochs, learning rate, gradient source, data
    path). Abbreviated options are refused (``--epoch`` is not taken for ``--epochs``),
    errors are one line, and ``writes`` (file names with what they hold, e.g.
    "loss.png (loss and accuracy per epoch)") goes into the help's last paragraph.
    """
    files = ["results.json (configuration, environment, per-epoch history, summary)",
             *writes]
    p = Parser(
        prog=f"python -m experiments.{name}",
        description=(doc or "").strip().split("\n\n")[0],
        epilog=(f"Writes {Path('runs') / name}/<--out or a timestamp>/: " + "; ".join(files)
                + ". results.json says \"status\": \"complete\" once the run has finished."),
        formatter_class=HelpFormatter,
        allow_abbrev=False,
    )
    p.add_argument("--seed", type=int, default=0, help="PRNG seed for init, data and shuffles")
    p.add_argument("--dtype", choices=("float32", "float64"), default="float32",
                   help="floating-point type of data and parameters")
    p.add_argument("--device", choices=DEVICES, default=None,
                   help="backend to run on (default: JAX's default backend)")
    p.add_argument("--out", default=None,
                   help="name of the run folder under runs/NAME/ (default: a timestamp)")
    p.add_argument("--runs-dir", default="runs", help="folder holding all runs")
    p.add_argument("--overwrite", action="store_true",
                   help="allow writing into an existing run folder (its old checkpoints "
                        "are removed)")
    p.add_argument("--smoke", action="store_true",
                   help="a few steps only: checks the script end to end")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.add_argument("--system-malloc", action="store_true",
                   help="leave glibc's malloc as it is (see common.retain_freed_memory)")
    return p


def count(low: int = 1):
    """An argparse ``type``: an integer >= low, else a one-line usage error."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < low:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {text!r}")
        return value

    parse.__name__ = f"integer >= {low}"
    return parse


def positive(text: str) -> float:
    """An argparse ``type``: a finite number > 0, else a one-line usage error."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected a finite number > 0, got {text!r}")
    return value


def add_training_args(p: argparse.ArgumentParser, *, epochs: int, alpha: float,
                      batch_size: int) -> None:
    """--epochs, --alpha (learning rate), --batch-size, --source (manual/autodiff/both)."""
    p.add_argument("--epochs", type=count(1), default=epochs, help="passes over the training set")
    p.add_argument("--alpha", "--lr", dest="alpha", type=positive, default=alpha,
                   help="learning rate of the explicit SGD update θ ← θ − α ∂L/∂θ")
    p.add_argument("--batch-size", type=count(1), default=batch_size,
                   help="examples per SGD step")
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


def read_status(folder: Path) -> dict | None:
    """{"status", "progress"} from folder/results.json, or None when it holds none.

    "status" is "complete", "running" (still running, or killed), "interrupted" or
    "diverged"; results.json without one (an older run) counts as complete.
    """
    try:
        with open(Path(folder) / "results.json") as f:
            saved = json.load(f)
    except (OSError, ValueError):
        return None
    if not isinstance(saved, dict):
        return None
    return {"status": saved.get("status", "complete"), "progress": saved.get("progress", "")}


def has_checkpoints(folder: Path) -> bool:
    """Whether folder/checkpoints/ holds any checkpoint file."""
    return any(Path(folder, "checkpoints").glob("*/checkpoint_*.npz"))


def _refusal(path: Path) -> str:
    """Why an existing run folder is not reused, and exactly what to pass instead."""
    state = read_status(path)
    status = state["status"] if state else None
    where = f" ({state['progress']})" if state and state["progress"] else ""
    if status == "diverged":
        return (f"{path} exists and holds a run that diverged{where}; pass --overwrite to "
                "start it again, with a smaller --alpha")
    if status in ("running", "interrupted") or (status is None and has_checkpoints(path)):
        if has_checkpoints(path):
            return (f"{path} exists and holds an unfinished run{where}; pass --resume to "
                    "continue it from its last checkpoint, or --overwrite to start again")
        return (f"{path} exists and holds an unfinished run{where} without checkpoints; "
                "pass --overwrite to start it again")
    return f"{path} exists; choose another --out, or pass --overwrite to replace that run"


def run_dir(args: argparse.Namespace, name: str) -> Path:
    """Create and return runs_dir/name/<out or timestamp>/.

    An existing folder is refused (``UsageError`` saying what it holds and what to pass)
    unless --overwrite, or --resume (``add_checkpoint_args``), which needs --out to name
    an existing run to continue; a timestamp that already exists gets a numeric suffix.
    """
    base = Path(args.runs_dir) / safe_name(name, "experiment name")
    resume = getattr(args, "resume", False)
    if resume and args.out is None:
        raise UsageError("--resume needs --out NAME, the run folder to continue")
    if args.out is not None:
        try:
            path = base / safe_name(args.out)
        except ValueError as error:
            raise UsageError(f"--out: {error}") from None
        if resume and not path.is_dir():
            raise UsageError(f"--resume: there is no run {path} to continue; leave out "
                             "--resume to start it")
        if path.exists() and not (args.overwrite or resume):
            raise UsageError(_refusal(path))
    else:
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        path, i = base / stamp, 1
        while path.exists():
            path, i = base / f"{stamp}-{i}", i + 1
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UsageError(f"cannot make the run folder {path}: {error.strerror or error}") from None
    return path


# --- a run: its folder, its partial results, and how it ends -------------------------

_ACTIVE: list["Run"] = []


class Run:
    """One run of an experiment: its folder, the results so far, and how to go on.

    ``Run(args, name, argv)`` makes the run folder (``run_dir``) and writes a
    results.json with ``"status": "running"``. The script keeps ``results`` up to date
    (``train_sources`` does so epoch by epoch and notes its checkpoints) and ends with
    ``finish(results)`` (``"status": "complete"``). If the script stops early instead
    (Ctrl-C, a ``NonFiniteError``), ``common.run`` calls ``stop``: results.json then
    holds the results so far with ``"status": "interrupted"`` or ``"diverged"``, and
    the one line it prints says where they are, where the last checkpoint is and which
    command continues the run.
    """

    def __init__(self, args: argparse.Namespace, name: str, argv: Sequence[str] | None = None):
        self.name, self.args = name, args
        self.argv = list(sys.argv[1:] if argv is None else argv)
        self.folder = run_dir(args, name)
        self.results: dict = {}
        self.stage = "setting up"
        self.checkpoint: tuple[Path, str] | None = None  # (newest checkpoint, its epoch)
        self.resumable = False  # whether --resume continues it from a checkpoint
        self.save("running")
        _ACTIVE.append(self)

    def save(self, status: str, **extra) -> Path:
        """results.json with the status, progress, configuration and results so far."""
        return write_json(self.folder / "results.json", {
            "status": status, "complete": status == "complete", "progress": self.stage,
            "config": vars(self.args), "environment": environment(), **self.results,
            **extra})

    def finish(self, results: dict | None = None) -> Path:
        """Write the complete results.json; the run is over."""
        self.results.update(results or {})
        self.stage = "finished"
        path = self.save("complete")
        if self in _ACTIVE:
            _ACTIVE.remove(self)
        return path

    def command(self, *extra: str, drop: Sequence[str] = ()) -> str:
        """The command line that runs this run again, with ``extra`` options."""
        import shlex

        argv, skip = [], False
        for token in self.argv:
            name = token.split("=", 1)[0]
            if skip:
                skip = False
            elif name in ("--resume", "--overwrite"):
                pass
            elif name in drop:
                skip = "=" not in token
            else:
                argv.append(token)
        if self.args.out is None:
            argv += ["--out", self.folder.name]
        return shlex.join(["python", "-m", f"experiments.{self.name}", *argv, *extra])

    def stop(self, status: str, error: BaseException | None = None) -> str:
        """Save the results so far as ``status`` ("interrupted" or "diverged") and return
        the one line that says what happened, where the results and the last checkpoint
        are, and how to go on."""
        if self in _ACTIVE:
            _ACTIVE.remove(self)
        if status == "diverged" and error is not None and hasattr(error, "epoch"):
            what = (f"diverged (non-finite loss or gradient at epoch {error.epoch + 1}, "
                    f"step {error.step + 1})")
        else:
            what = "interrupted (Ctrl-C)" if status == "interrupted" else status
        path = self.save(status, stopped={"status": status, "during": self.stage,
                                          "error": None if error is None else str(error)})
        line = (f"{self.name}: {what} during {self.stage}; results so far in {path} "
                f"(status {status})")
        if self.checkpoint is not None:
            line += f"; last checkpoint {self.checkpoint[0]} ({self.checkpoint[1]})"
        elif self.resumable:
            line += "; no checkpoint yet"
        if status == "diverged":
            alpha = getattr(self.args, "alpha", None)
            smaller = ("--alpha", f"{alpha / 10:g}") if isinstance(alpha, float) else ()
            return line + (f"; to start again with a smaller step: "
                           f"{self.command(*smaller, '--overwrite', drop=('--alpha', '--lr'))}")
        if self.resumable:
            return line + f"; to resume: {self.command('--resume')}"
        return line + f"; to start again: {self.command('--overwrite')}"


def open_runs() -> list[Run]:
    """The runs open now (started, neither finished nor stopped), outermost first."""
    return list(_ACTIVE)


def close_runs(keep: Sequence[Run]) -> None:
    """Forget the open runs other than ``keep`` (those of a step that failed and was
    reported, whose results.json stays "running")."""
    _ACTIVE[:] = [r for r in _ACTIVE if r in keep]


def run(main: Callable, argv: Sequence[str] | None = None,
        status: Callable[[dict], int] | None = None) -> int:
    """Run an experiment's ``main(argv)`` and return its exit status; every script's entry:
    ``if __name__ == "__main__": sys.exit(common.run(main))``.

    A ``UsageError`` (or ``SystemExit`` with a message) is printed as one line, status 2.
    Ctrl-C (status 130) and a ``NonFiniteError`` (divergence, status 1) leave every open
    ``Run`` with its results so far in results.json and print one line saying where they
    are and how to resume. ``status(result)`` maps main's result to the status
    (default 0).
    """
    module = sys.modules.get(getattr(main, "__module__", ""))
    spec = getattr(module, "__spec__", None)
    prog = f"python -m {spec.name if spec is not None else 'experiments'}"
    _ACTIVE.clear()
    if threading.current_thread() is threading.main_thread():
        # a background job of a shell starts with SIGINT ignored; `kill -INT` is Ctrl-C here
        signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        result = main(argv)
    except KeyboardInterrupt:
        return _stop(prog, "interrupted", 130)
    except FloatingPointError as error:  # jaxnn.sgd.NonFiniteError
        return _stop(prog, "diverged", 1, error)
    except SystemExit as error:
        _ACTIVE.clear()
        if isinstance(error.code, int) or error.code is None:
            return error.code or 0  # argparse has printed its one line (or the help)
        message = error.message if isinstance(error, UsageError) else str(error.code)
        print(f"{prog}: error: {message}", file=sys.stderr, flush=True)
        return 2
    return 0 if status is None else int(status(result))


def _stop(prog: str, status: str, code: int, error: BaseException | None = None) -> int:
    runs = list(reversed(_ACTIVE))
    if not runs:
        what = "interrupted (Ctrl-C)" if status == "interrupted" else f"{status}: {error}"
        print(f"{prog}: {what} before a run folder was made; nothing was written",
              file=sys.stderr, flush=True)
        return code
    lines = [r.stop(status, error) for r in runs]  # innermost first (the tour's experiments)
    print(lines[0], file=sys.stderr, flush=True)
    return code


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


def duration(seconds: float) -> str:
    """A duration in the unit that suits it, 3 significant figures: "28.1 ms", "3.20 s",
    "2 min 05 s"."""
    if not isinstance(seconds, (int, float)) or not math.isfinite(seconds):
        return "n/a"
    if seconds == 0:
        return "0 s"
    if abs(seconds) >= 60:
        minutes, rest = divmod(round(abs(seconds)), 60)
        return f"{'-' if seconds < 0 else ''}{minutes} min {rest:02d} s"
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("µs", 1e-6), ("ns", 1e-9)):
        text = f"{seconds / scale:#.3g}".rstrip(".")
        if abs(float(text)) >= 1 or unit == "ns":
            return f"{text} {unit}"
    raise AssertionError("unreachable")


def difference(value: float) -> str:
    """A difference or relative error: "identical" when exactly 0, else 2 significant
    figures in e-notation ("3.1e-15"); "n/a" when not a number."""
    if not isinstance(value, (int, float)) or math.isnan(value):
        return "n/a"
    if value == 0:
        return "identical"
    return f"{value:.2g}" if 1e-3 <= abs(value) < 1e3 else f"{value:.1e}"


def percent(value: float) -> str:
    """A fraction as a percentage with two decimals: 0.98051 -> "98.05%"."""
    if not isinstance(value, (int, float)) or math.isnan(value):
        return "n/a"
    return f"{100 * value:.2f}%"


def number(value) -> str:
    """A cell of a table: integers (and integral floats) as integers, other floats to 4
    significant figures, non-finite ones as "nan"/"inf", anything else as str."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.number)):
        return str(value)
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    value = float(value)
    if not math.isfinite(value):
        return str(value)
    if value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return f"{value:.4g}"


FORMATS = {"seconds": duration, "difference": difference, "percent": percent,
           "number": number, "microseconds": lambda v: duration(v * 1e-6)
           if isinstance(v, (int, float)) else str(v)}


def _kind(column: str) -> str:
    """The format a column's name implies: durations, differences, or plain numbers."""
    name = column.lower()
    if name in ("seconds", "s", "time") or name.endswith((" seconds", "_seconds", " (s)")):
        return "seconds"
    if name.startswith("us_") or name.endswith(("_us", "(µs)", "(us)", " µs")):
        return "microseconds"
    if "difference" in name or "/autodiff" in name or "rel. error" in name:
        return "difference"
    return "number"


def table(rows: Sequence[dict], columns: Sequence[str] | None = None,
          formats: dict | None = None) -> str:
    """A plain-text table from a list of dicts, numbers formatted for reading.

    ``formats`` maps a column to "seconds", "microseconds", "difference", "percent",
    "number" or a function of the value; other columns get the format their name implies
    (``_kind``: "seconds" columns as durations, "... difference" and "x/autodiff"
    columns as differences, where exact equality reads "identical"), else ``number``.
    Strings are shown as they are; a missing cell is empty.
    """
    rows = list(rows)
    if not rows:
        return "(no rows)"
    columns = list(columns or rows[0].keys())
    formats = formats or {}

    def cell(row, column):
        if column not in row or row[column] is None:
            return ""
        value = row[column]
        if isinstance(value, str):
            return value
        kind = formats.get(column, _kind(column))
        return (kind if callable(kind) else FORMATS[kind])(value)

    cells = [[cell(r, c) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    line = "  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True))
    rule = "  ".join("-" * w for w in widths)
    body = ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(x.rstrip() for x in [line, rule, *body])


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


def add_checkpoint_args(p: argparse.ArgumentParser, every: int = 1) -> None:
    """--checkpoint-every N, --keep-checkpoints K and --resume, for ``train_sources`` (and
    ``train_with_checkpoints``)."""
    p.add_argument("--checkpoint-every", type=count(0), default=every, metavar="N",
                   help="save the whole training state every N epochs and after the last, "
                        "under <run folder>/checkpoints/; 0: no checkpoints, so an "
                        "interrupted run cannot be resumed")
    p.add_argument("--keep-checkpoints", type=count(1), default=3, metavar="K",
                   help="how many of the newest checkpoints to keep")
    p.add_argument("--resume", action="store_true",
                   help="continue the run named by --out from its newest valid checkpoint "
                        "(pass the options it was started with)")


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
        raise UsageError(f"--checkpoint-every must be >= 0 and --keep-checkpoints >= 1, "
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


def schedule(alpha: float, epochs: int, kind: str = "constant") -> list[float]:
    """The learning rate of each epoch: α throughout ("constant"), or α ½ (1 + cos(π e / E))
    for epoch e of E ("cosine": from α down to nearly 0, the last epoch's is α ½ (1 +
    cos(π (E − 1) / E)))."""
    if kind == "constant":
        return [float(alpha)] * epochs
    if kind == "cosine":
        return [float(alpha) * 0.5 * (1 + math.cos(math.pi * e / epochs)) for e in range(epochs)]
    raise ValueError(f"schedule must be 'constant' or 'cosine', got {kind!r}")


@functools.cache
def _compiled_accuracy():
    import jax

    return jax.jit(lambda model, params, X, y: model.accuracy(params, X, y), static_argnums=0)


def _accuracy(model, params, X, y) -> float:
    return float(_compiled_accuracy()(model, params, X, y))


def _restore(run: Run, folder: Path, params: dict, key, config: dict):
    """(params, record, epoch) of the newest valid checkpoint in folder, or None without one;
    a checkpoint of another configuration is a UsageError naming the option."""
    import jax

    from jaxnn import checkpoint

    try:
        restored = checkpoint.restore_latest(folder, checkpoint.TrainState(params, ()))
    except checkpoint.CheckpointError as error:
        raise UsageError(f"--resume: {error}".replace("\n ", ";")) from None
    if restored is None:
        print(f"no checkpoint in {folder}; starting at epoch 1", file=sys.stderr, flush=True)
        return None
    for skipped in restored.skipped:
        print(f"skipped {skipped.path}: {skipped.reason}", file=sys.stderr, flush=True)
    state = restored.state
    saved = (state.config or {}).get("run", {})
    for name, value in config.items():
        if saved.get(name) != value:
            raise UsageError(
                f"--resume: {restored.path} was written by a run with {name} "
                f"{saved.get(name)!r}, this one has {value!r}; pass the options that run "
                "was started with, or --overwrite to start again")
    if state.key is None or not np.array_equal(jax.random.key_data(state.key),
                                               jax.random.key_data(key)):
        raise UsageError(f"--resume: {restored.path} was written with another --seed")
    print(f"resumed from {restored.path}, after epoch {state.epoch}", file=sys.stderr,
          flush=True)
    run.checkpoint = (restored.path, f"after epoch {state.epoch}")
    return state.params, state.history, state.epoch


def train_sources(run: Run, model, init, split, key, *, sources: Sequence[str], epochs: int,
                  alpha: float, batch_size: int, desc: str, tag: str = "train",
                  lr_schedule: str = "constant", into: dict | None = None,
                  options: dict | None = None) -> dict:
    """``jaxnn.sgd.train`` of one initialisation with each gradient source, epoch by epoch
    in lockstep, recorded, checkpointed and resumable.

    Every source starts from ``init`` and sees the same minibatches (epoch e shuffles with
    fold_in(key, e)); epoch e uses the learning rate ``schedule(alpha, epochs,
    lr_schedule)[e]``. After each epoch it records per source the mean training loss, the
    training and test accuracy and the seconds spent, and with two sources the
    ``tree_difference`` of their parameters; ``into`` (a dict, e.g. part of
    ``run.results``, so that a stopped run saves them) receives {"history": {source:
    {"loss", "train_accuracy", "test_accuracy", "seconds"}}, "trajectory_difference":
    [one dict per epoch]}.

    With --checkpoint-every N (``add_checkpoint_args``) every N-th epoch and the last write
    one checkpoint under run folder/checkpoints/<tag>/ holding every source's parameters
    and the records so far, then results.json (status "running"). With --resume training
    continues from the newest valid checkpoint there, on the uninterrupted run's
    trajectory, and the records are the uninterrupted run's (seconds aside); a checkpoint
    written with other ``options`` (flag: value, e.g. {"--alpha": 0.5}), network, data or
    schedule is a ``UsageError``. --overwrite removes the checkpoints of an earlier run.

    Returns {source: trained parameters}.
    """
    import jax
    import jax.numpy as jnp

    from jaxnn import checkpoint, sgd

    args = run.args
    every = getattr(args, "checkpoint_every", 0)
    keep = getattr(args, "keep_checkpoints", 3)
    folder = run.folder / "checkpoints" / safe_name(tag, "checkpoint tag")
    X, y = jnp.asarray(split.X_train), jnp.asarray(split.y_train)
    X_test, y_test = jnp.asarray(split.X_test), jnp.asarray(split.y_test)
    rates = schedule(alpha, epochs, lr_schedule)
    config = {"network": repr(model), "sources": list(sources), "--epochs": epochs,
              "--alpha": float(alpha), "schedule": lr_schedule, "--batch-size": batch_size,
              "m_train": int(len(y)), "m_test": int(len(y_test)),
              "dtype": str(jax.tree.leaves(init)[0].dtype), **(options or {})}
    record = into if into is not None else {}
    record["history"] = {s: {"loss": [], "train_accuracy": [], "test_accuracy": [],
                             "seconds": 0.0} for s in sources}
    compare = len(sources) == 2
    if compare:
        record["trajectory_difference"] = []
    params, start = {s: init for s in sources}, 0
    run.resumable = run.resumable or every > 0
    if getattr(args, "resume", False):
        restored = _restore(run, folder, params, key, config)
        if restored is not None:
            params, saved, start = restored
            record.update(saved)
    elif getattr(args, "overwrite", False):
        for _, path in checkpoint.list_checkpoints(folder):
            path.unlink()
    steps = len(y) // batch_size
    bar = progress(None, args, total=epochs, initial=start, desc=desc, unit="epoch")
    with bar:
        for e in range(start, epochs):
            run.stage = f"{desc}, epoch {e + 1} of {epochs}"
            for source in sources:
                h = record["history"][source]
                with Timer() as t:
                    params[source], history = sgd.train(
                        model, params[source], X, y, key=key, alpha=rates[e], epochs=e + 1,
                        batch_size=batch_size, source=source, start_epoch=e,
                        history={"loss": h["loss"], "accuracy": h["train_accuracy"]})
                h["loss"], h["train_accuracy"] = history["loss"], history["accuracy"]
                h["test_accuracy"].append(_accuracy(model, params[source], X_test, y_test))
                h["seconds"] += t.seconds
            if compare:
                record["trajectory_difference"].append(tree_difference(*params.values()))
            bar.update(1)
            bar.set_postfix(loss=f"{record['history'][sources[0]]['loss'][-1]:.4g}",
                            refresh=False)
            if every and ((e + 1) % every == 0 or e + 1 == epochs):
                # results.json first: once the checkpoint exists, the history it holds is
                # in results.json too (a run killed in between resumes from the older one)
                run.save("running")
                path = checkpoint.save(folder, checkpoint.TrainState(
                    params, (), key, e + 1, (e + 1) * steps, to_jsonable(record),
                    {"run": config}), keep=keep)
                run.checkpoint = (path, f"after epoch {e + 1}")
    return params
