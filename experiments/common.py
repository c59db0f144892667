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
import tempfile
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


def setup(args: argparse.Namespace) -> None:
    """Apply --dtype and --device before any array is made (must run before JAX work)."""
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


_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def safe_name(name: str, what: str = "run name") -> str:
    """A single path component of letters, digits, '.', '_', '-'; else ValueError.

    Keeps every file of a run inside the folder the user chose: no '/', no '..'.
    """
    if not isinstance(name, str) or not _NAME.match(name) or name in (".", ".."):
        raise ValueError(
            f"{what} must be letters, digits, '.', '_' or '-' (no path separators), "
            f"got {name!r}"
        )
    return name


def run_dir(args: argparse.Namespace, name: str) -> Path:
    """Create and return runs_dir/name/<out or timestamp>/.

    An existing folder is refused unless --overwrite; a timestamp that already exists
    gets a numeric suffix.
    """
    base = Path(args.runs_dir) / safe_name(name, "experiment name")
    if args.out is not None:
        path = base / safe_name(args.out)
        if path.exists() and not args.overwrite:
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
    """Write JSON atomically: a temporary file in the same folder, fsync, rename."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(to_jsonable(data), f, indent=2, allow_nan=False)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
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
