"""Atomic save and restore of the whole training state, in a small format of our own.

A checkpoint is one file, ``checkpoint_<step as 12 digits>.npz``, in a folder the caller
chose; its name comes from the step number alone. It is numpy's ``.npz`` (a zip of
``.npy`` arrays, written by ``np.savez``) holding

- ``leaf_0``, ``leaf_1``, ...: one array per leaf of the parameters and of the optimiser
  state, and the PRNG key's raw data (``jax.random.key_data``);
- ``__metadata__``: UTF-8 JSON as uint8 bytes: the format name and version, epoch,
  step, the key's implementation, the metrics history, the run configuration, and for
  every leaf its group (params, opt_state, key), its pytree path
  (``jax.tree_util.keystr``, e.g. ``[0]['W']`` or ``[0].mu[1]['b']``), shape and dtype;
- ``__sha256__``: SHA-256 of the metadata and of every array's name, dtype, shape and
  bytes, as hex text in uint8 bytes.

Reading never runs code from the file and never trusts a size it states: only a
regular file is opened; every zip entry must be stored (not compressed) and lie inside
the file; every ``.npy`` header is checked against the metadata and against its entry's
size before its data is allocated (pickled object arrays are refused); the metadata
entry may hold at most 64 MiB and is parsed as JSON, which builds only dicts, lists,
strings and numbers. The
checksum detects damage (a truncated write, a flipped bit); it is not a signature.

Restoring needs a template of the state: parameters and optimiser state of the wanted
structure (arrays or ``jax.ShapeDtypeStruct``; ``optimizer.init(params)`` gives optax's
NamedTuples). Leaves are matched by pytree path, shape and dtype and put back into the
template's structure; a file from another architecture or optimiser raises
:class:`CheckpointMismatchError` naming the first leaf that differs.

Writes are atomic: a temporary file in the same folder, flushed and fsynced, renamed
over the final name with ``os.replace``, then the folder itself fsynced. A crash leaves
either the old set of checkpoints or the new one, never a half-written file under a
checkpoint name. After each save only the ``keep`` newest checkpoints stay. One process
writes a folder at a time.

:func:`restore_latest` restores the newest checkpoint that reads back intact and fits
the template, and reports each newer one it skipped and why. :func:`train` is
``jaxnn.sgd.train`` with a checkpoint every few epochs and a resume from the newest
valid one; resumed, it follows the uninterrupted run's trajectory exactly.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import math
import os
import re
import tempfile
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxnn import checks, parallel, sgd
from jaxnn.files import BadFileError, open_regular

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "CheckpointError",
    "CheckpointMismatchError",
    "CorruptCheckpointError",
    "NoValidCheckpointError",
    "NonFiniteStateError",
    "Restored",
    "Skipped",
    "TrainState",
    "checkpoint_path",
    "list_checkpoints",
    "read_metadata",
    "restore",
    "restore_latest",
    "save",
    "train",
]

FORMAT = "jaxnn-checkpoint"
FORMAT_VERSION = 1
GROUPS = ("params", "opt_state", "key")
_METADATA, _CHECKSUM = "__metadata__", "__sha256__"
_FILE = re.compile(r"checkpoint_(\d{12})\.npz")  # always fullmatch: "$" admits "\n"
_TEMP = re.compile(r"\.checkpoint_\d{12}\.npz\.[A-Za-z0-9_]+\.tmp")
_LEAF = re.compile(r"leaf_(0|[1-9]\d{0,8})")
_MAX_METADATA = 64 * 2**20
_MAX_STEP = 10**12 - 1


class TrainState(NamedTuple):
    """Everything a run needs to continue.

    params: the parameter pytree. opt_state: the optimiser state (``()`` for the
    explicit update). key: the run's PRNG key (typed ``jax.random.key`` or raw uint32),
    or None. epoch: epochs completed, the next one to run. step: SGD steps completed;
    it names the file. history: metrics, e.g. ``sgd.train``'s {"loss": [...],
    "accuracy": [...]}. config: the run's configuration. history and config must be
    JSON (dicts, lists, strings, finite numbers, booleans, None).
    """

    params: Any
    opt_state: Any = ()
    key: jax.Array | None = None
    epoch: int = 0
    step: int = 0
    history: dict | None = None
    config: dict | None = None


class CheckpointError(ValueError):
    """A checkpoint cannot be used; ``path`` names the file, ``reason`` says why."""

    def __init__(self, path, reason: str):
        self.path, self.reason = Path(path), reason
        super().__init__(f"{path}: {reason}")


class CorruptCheckpointError(CheckpointError):
    """The file is unreadable, truncated, altered, not a checkpoint, or holds pickles."""


class CheckpointMismatchError(CheckpointError):
    """The file is intact but does not fit the template (architecture, optimiser, dtype)
    or was written in a format version this code does not read."""


class NonFiniteStateError(CheckpointError):
    """A state with NaN or infinite parameters or optimiser state: ``save`` refused to
    write it, or ``restore`` to return it (both unless ``allow_nonfinite=True``)."""


class Skipped(NamedTuple):
    """A checkpoint ``restore_latest`` passed over, and why."""

    path: Path
    reason: str


class Restored(NamedTuple):
    """The result of ``restore_latest``: the state, its file, and the newer files skipped."""

    state: TrainState
    path: Path
    skipped: tuple[Skipped, ...]


class NoValidCheckpointError(CheckpointError):
    """Every checkpoint in a folder was skipped; ``skipped`` lists them with reasons."""

    def __init__(self, folder, skipped: tuple[Skipped, ...]):
        self.skipped = skipped
        lines = "".join(f"\n  {s.path.name}: {s.reason}" for s in skipped)
        super().__init__(folder, f"no usable checkpoint among {len(skipped)}:{lines}")


# --- names -------------------------------------------------------------------------------


def checkpoint_path(folder: str | os.PathLike, step: int) -> Path:
    """folder/checkpoint_<step, 12 digits>.npz; the name depends on the step alone."""
    step = checks.integer(step, "step", 0, _MAX_STEP)
    return Path(folder) / f"checkpoint_{step:012d}.npz"


def _scan(folder: Path) -> tuple[list[tuple[int, Path]], list[Skipped]]:
    """Checkpoint files in folder by step, and entries with a checkpoint name that are
    not regular files (a symlink could point anywhere; it is never followed)."""
    found, odd = [], []
    try:
        entries = list(os.scandir(folder))
    except FileNotFoundError:
        return [], []
    for entry in entries:
        match = _FILE.fullmatch(entry.name)
        if not match:
            continue
        if entry.is_symlink() or not entry.is_file(follow_symlinks=False):
            odd.append(Skipped(Path(entry.path), "not a regular file (symlinks are not followed)"))
            continue
        found.append((int(match.group(1)), Path(entry.path)))
    return sorted(found), odd


def list_checkpoints(folder: str | os.PathLike) -> list[tuple[int, Path]]:
    """[(step, path)] of the checkpoint files in folder, oldest step first.

    Only regular files named ``checkpoint_<12 digits>.npz`` count; temporary files of an
    interrupted write and everything else are ignored. A missing folder has none.
    """
    return _scan(Path(folder))[0]


# --- writing -----------------------------------------------------------------------------


def _host(leaf, where: str) -> np.ndarray:
    array = np.asarray(jax.device_get(leaf))
    if array.dtype.hasobject:
        raise TypeError(f"{where}: object arrays cannot be saved (no pickles), got {array.dtype}")
    return array


def _stored(array: np.ndarray) -> np.ndarray:
    """The array as written: numpy's own dtypes as they are, others (bfloat16, float8)
    as unsigned ints of the same width; the metadata keeps the real dtype."""
    if array.dtype.isbuiltin == 1 and array.dtype.kind in "biufc":
        return array
    if array.dtype.itemsize not in (1, 2, 4, 8):
        raise TypeError(f"cannot store dtype {array.dtype}")
    return array.view(f"u{array.dtype.itemsize}")


def _finite(array: np.ndarray) -> bool:
    """True unless a floating or complex array (bfloat16 and float8 included) holds NaN
    or an infinity."""
    return not jnp.issubdtype(array.dtype, jnp.inexact) or bool(np.all(np.isfinite(array)))


def _digest(metadata: bytes, entries: list[tuple[str, np.ndarray]]) -> str:
    h = hashlib.sha256()
    h.update(FORMAT.encode() + b"\0" + metadata + b"\0")
    for name, array in entries:
        h.update(f"{name}\0{array.dtype.str}\0{array.shape}\0".encode())
        h.update(np.ascontiguousarray(array).reshape(-1).view(np.uint8))
    return h.hexdigest()


def _as_bytes(text: str) -> np.ndarray:
    return np.frombuffer(text.encode("utf-8"), dtype=np.uint8)


def _to_json(value, what: str) -> Any:
    try:
        return json.loads(json.dumps(value, allow_nan=False))
    except (TypeError, ValueError) as error:
        raise ValueError(
            f"{what} must be JSON (dicts, lists, strings, finite numbers, None): {error}"
        ) from None


def _fsync_folder(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # platforms that cannot open a folder (Windows)
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_atomic(path: Path, write: Callable[[IO], None], mode: str = "wb") -> None:
    """Write ``path`` all at once or not at all: ``write(f)`` into a temporary file in
    the same folder (opened with ``mode``), fsync, rename over ``path``, fsync the folder.

    On any error the temporary is removed and ``path`` is left as it was.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_folder(path.parent)


def _prune(folder: Path, written: Path, keep: int | None) -> None:
    for entry in os.scandir(folder):  # temporaries of writes that were interrupted
        if _TEMP.fullmatch(entry.name) and entry.is_file(follow_symlinks=False):
            Path(entry.path).unlink(missing_ok=True)
    if keep is None:
        return
    others = [path for _, path in reversed(list_checkpoints(folder)) if path != written]
    for path in others[keep - 1:]:
        path.unlink(missing_ok=True)


def save(folder: str | os.PathLike, state: TrainState, *, keep: int | None = 3,
         allow_nonfinite: bool = False) -> Path:
    """Write ``state`` atomically to folder/checkpoint_<state.step>.npz and keep the newest.

    Args:
      folder: where checkpoints live; created if missing. Nothing is written elsewhere.
      state: a :class:`TrainState`.
      keep: how many checkpoints to keep, newest steps first (the one just written is
        always kept); None keeps all.
      allow_nonfinite: write even if a parameter or optimiser-state entry is NaN or
        infinite. By default such a state raises :class:`NonFiniteStateError` before
        anything is written, so the last finite checkpoint is never replaced or pruned.
    Returns:
      The path written.
    """
    if not isinstance(state, TrainState):
        raise TypeError(f"state must be a checkpoint.TrainState, got {type(state).__name__}")
    if keep is not None:
        keep = checks.integer(keep, "keep", 1)
    path = checkpoint_path(folder, state.step)
    epoch = checks.integer(state.epoch, "epoch")
    entries: list[tuple[str, np.ndarray]] = []
    leaves: list[dict] = []

    def add(group: str, keypath: str, array: np.ndarray) -> None:
        name = f"leaf_{len(entries)}"
        entries.append((name, _stored(array)))
        leaves.append({"name": name, "group": group, "path": keypath,
                       "shape": list(array.shape), "dtype": jnp.dtype(array.dtype).name})

    for group in ("params", "opt_state"):
        for keypath, leaf in jax.tree_util.tree_flatten_with_path(getattr(state, group))[0]:
            where = f"{group}{jax.tree_util.keystr(keypath)}"
            array = _host(leaf, where)
            if not allow_nonfinite and not _finite(array):
                raise NonFiniteStateError(
                    path, f"{where} holds NaN or infinite values; not saved, so the last "
                    "finite checkpoint stays (pass allow_nonfinite=True to save anyway)")
            add(group, jax.tree_util.keystr(keypath), array)
    key_meta = None
    if state.key is not None:
        key = state.key
        typed = jax.dtypes.issubdtype(jnp.result_type(key), jax.dtypes.prng_key)
        add("key", "", _host(jax.random.key_data(key) if typed else key, "key"))
        key_meta = {"typed": bool(typed),
                    "impl": str(jax.random.key_impl(key)) if typed else None}
    metadata = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "epoch": epoch,
        "step": int(state.step),
        "key": key_meta,
        "history": _to_json(state.history if state.history is not None else {}, "history"),
        "config": _to_json(state.config if state.config is not None else {}, "config"),
        "leaves": leaves,
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "jax_version": jax.__version__,
    }
    meta_bytes = json.dumps(metadata, allow_nan=False, sort_keys=True).encode("utf-8")
    arrays = dict(entries)
    arrays[_METADATA] = np.frombuffer(meta_bytes, dtype=np.uint8)
    arrays[_CHECKSUM] = _as_bytes(_digest(meta_bytes, entries))
    Path(folder).mkdir(parents=True, exist_ok=True)
    write_atomic(path, lambda f: np.savez(f, **arrays))
    _prune(Path(folder), path, keep)
    return path


# --- reading -----------------------------------------------------------------------------


def _members(zf: zipfile.ZipFile, path: Path, size: int) -> dict[str, zipfile.ZipInfo]:
    """The zip's ``name.npy`` entries by name, after checking each one's stated sizes
    against the file: stored (jaxnn never compresses, so no entry can expand), inside
    the file, and together no larger than it."""
    corrupt = CorruptCheckpointError
    members: dict[str, zipfile.ZipInfo] = {}
    total = 0
    for info in zf.infolist():
        name = info.filename
        if not name.endswith(".npy") or name[:-4] in members:
            raise corrupt(path, f"unexpected or duplicate entry {name[:80]!r} in the zip")
        if info.compress_type != zipfile.ZIP_STORED:
            raise corrupt(path, f"entry {name[:80]!r} is compressed; {FORMAT} files hold "
                                "stored entries only (refused before decompressing)")
        total += info.compress_size
        if (info.file_size != info.compress_size or info.header_offset + info.compress_size > size
                or total > size):
            raise corrupt(path, f"entry {name[:80]!r} claims {info.file_size} bytes, more than "
                                f"the {size}-byte file holds")
        members[name[:-4]] = info
    return members


def _member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, name: str, path: Path,
            shape: tuple | None, dtype: np.dtype | None, max_bytes: int | None = None):
    """Read one entry, checking its .npy header against the metadata and the size it
    claims against the zip entry's size before any data is allocated or read."""
    corrupt = CorruptCheckpointError
    unreadable = (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, zlib.error)
    try:
        with zf.open(info) as f:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                header = np.lib.format.read_array_header_1_0(f)
            elif version in ((2, 0), (3, 0)):
                header = np.lib.format.read_array_header_2_0(f)
            else:
                raise ValueError(f"unknown .npy version {version}")
            got_shape, fortran, got_dtype = header
            if got_dtype.hasobject:
                raise corrupt(path, f"entry {name!r} is a pickled object array (dtype "
                                    f"{got_dtype}); checkpoints hold plain numbers only and "
                                    "are never unpickled")
            if (shape is not None and tuple(got_shape) != shape) or (
                    dtype is not None and got_dtype != dtype):
                raise corrupt(path, f"entry {name!r} is {got_dtype}{list(got_shape)}, the "
                                    f"metadata says {dtype}"
                                    f"{list(shape) if shape is not None else ''}")
            nbytes = math.prod(got_shape) * got_dtype.itemsize
            if max_bytes is not None and nbytes > max_bytes:
                raise corrupt(path, f"entry {name!r} claims {nbytes} bytes, more than the "
                                    f"{max_bytes} allowed for it")
            if f.tell() + nbytes != info.file_size:
                raise corrupt(path, f"entry {name!r} claims {list(got_shape)} of {got_dtype} "
                                    f"({nbytes} bytes), the zip entry holds "
                                    f"{info.file_size - f.tell()} (truncated or forged)")
            data = bytearray(nbytes)
            if f.readinto(data) != nbytes or f.read(1):
                raise EOFError("the entry ended early")
    except CheckpointError:
        raise
    except unreadable as error:
        reason = f"entry {name!r} is unreadable ({type(error).__name__}: {error})"
        raise corrupt(path, reason) from error
    array = np.frombuffer(data, dtype=got_dtype)
    return array.reshape(got_shape, order="F" if fortran else "C")


def _brief(value) -> str:
    """A short description of a value read from a file (no deep or long repr)."""
    if isinstance(value, str | int | float | bool) or value is None:
        text = repr(value) if not isinstance(value, int) or abs(value) < 10**20 else "a huge int"
        return text[:80] + ("..." if len(text) > 80 else "")
    if isinstance(value, dict):
        return f"a dict with keys {[_brief(k) for k in list(value)[:6]]}"
    return f"a {type(value).__name__}"


def _no_constants(name: str):
    raise ValueError(f"non-finite number {name}")


def _dtype_of_record(name: str) -> np.dtype:
    dtype = np.dtype(jnp.dtype(name))
    if dtype.hasobject or dtype.kind not in "biufcV":
        raise TypeError(f"not a numeric dtype: {name}")
    _stored(np.empty(0, dtype))
    return dtype


def _parse_metadata(raw: np.ndarray, path: Path) -> dict:
    corrupt = CorruptCheckpointError
    if raw.size > _MAX_METADATA:
        raise corrupt(path, f"metadata of {raw.size} bytes is implausibly large")
    try:
        meta = json.loads(raw.tobytes().decode("utf-8"), parse_constant=_no_constants)
    except (UnicodeDecodeError, ValueError) as error:
        raise corrupt(path, f"metadata is not valid JSON ({str(error)[:200]})") from None
    except RecursionError:
        raise corrupt(path, "metadata is not valid JSON (nested too deeply)") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise corrupt(path, f"not a {FORMAT} file")
    if meta.get("version") != FORMAT_VERSION:
        raise CheckpointMismatchError(
            path, f"format version {_brief(meta.get('version'))}; this code reads version "
            f"{FORMAT_VERSION}")
    fields = {"epoch": int, "step": int, "history": dict, "config": dict, "leaves": list}
    for field, kind in fields.items():
        if not isinstance(meta.get(field), kind) or isinstance(meta.get(field), bool):
            raise corrupt(path, f"metadata field {field!r} is missing or not a {kind.__name__}")
    seen = set()
    for leaf in meta["leaves"]:
        ok = (isinstance(leaf, dict) and isinstance(leaf.get("name"), str)
              and _LEAF.fullmatch(leaf["name"]) and leaf["name"] not in seen
              and leaf.get("group") in GROUPS and isinstance(leaf.get("path"), str)
              and isinstance(leaf.get("shape"), list)
              and all(isinstance(n, int) and not isinstance(n, bool) and n >= 0
                      for n in leaf["shape"])
              and isinstance(leaf.get("dtype"), str))
        if not ok:
            raise corrupt(path, f"malformed leaf record {_brief(leaf)}")
        seen.add(leaf["name"])
        try:
            leaf["np_dtype"] = _dtype_of_record(leaf["dtype"])
        except (TypeError, ValueError):
            raise corrupt(path, f"unsupported dtype {_brief(leaf['dtype'])} in the "
                                "metadata") from None
    key = meta.get("key")
    if key is not None and not (isinstance(key, dict) and isinstance(key.get("typed"), bool)
                                and (key.get("impl") is None or isinstance(key["impl"], str))):
        raise corrupt(path, f"malformed key record {_brief(key)}")
    return meta


def _read(path: Path) -> tuple[dict, dict[str, np.ndarray]]:
    """Metadata and arrays of an intact checkpoint file, else CorruptCheckpointError."""
    try:
        file, size = open_regular(path, "checkpoint")
    except BadFileError as error:
        raise CorruptCheckpointError(path, error.reason) from None
    with file:
        if file.read(6) == b"\x93NUMPY":
            raise CorruptCheckpointError(path, "a single .npy array, not a checkpoint .npz")
        file.seek(0)
        try:
            zf = zipfile.ZipFile(file)
        except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as error:
            reason = f"not a readable .npz file ({type(error).__name__}: {error})"
            raise CorruptCheckpointError(path, reason) from error
        with zf:
            meta, raw, arrays, entries, checksum = _read_entries(zf, _members(zf, path, size),
                                                                 path)
    if checksum.decode("ascii", "replace") != _digest(raw.tobytes(), entries):
        raise CorruptCheckpointError(
            path, "checksum mismatch: the file was damaged or altered after writing")
    return meta, arrays


def _read_entries(zf: zipfile.ZipFile, members: dict[str, zipfile.ZipInfo], path: Path):
    corrupt = CorruptCheckpointError
    if _METADATA not in members or _CHECKSUM not in members:
        raise corrupt(path, f"no {_METADATA} or {_CHECKSUM} entry: not a {FORMAT} file")
    raw = _member(zf, members[_METADATA], _METADATA, path, None, np.dtype(np.uint8),
                  _MAX_METADATA)
    if raw.ndim != 1:
        raise corrupt(path, "metadata entry is not a byte string")
    meta = _parse_metadata(raw, path)
    names = {leaf["name"] for leaf in meta["leaves"]}
    extra = sorted(set(members) - names - {_METADATA, _CHECKSUM})
    missing = sorted(names - set(members))
    if extra or missing:
        raise corrupt(path, f"entries {missing[:8]} missing, {extra[:8]} unexpected")
    arrays, entries = {}, []
    for leaf in meta["leaves"]:
        dtype = _stored(np.empty(0, leaf["np_dtype"])).dtype
        array = _member(zf, members[leaf["name"]], leaf["name"], path, tuple(leaf["shape"]),
                        dtype)
        entries.append((leaf["name"], array))
        arrays[leaf["name"]] = (array if dtype == leaf["np_dtype"]
                                else array.view(leaf["np_dtype"]))
    checksum = _member(zf, members[_CHECKSUM], _CHECKSUM, path, (64,),
                       np.dtype(np.uint8)).tobytes()
    return meta, raw, arrays, entries, checksum


def read_metadata(path: str | os.PathLike) -> dict:
    """The metadata of a checkpoint after checking the whole file (format, checksum).

    Raises FileNotFoundError or :class:`CorruptCheckpointError`.
    """
    meta, _ = _read(Path(path))
    for leaf in meta["leaves"]:
        del leaf["np_dtype"]
    return meta


def _template_leaf(leaf) -> tuple[tuple, np.dtype]:
    shape = tuple(leaf.shape) if hasattr(leaf, "shape") else np.shape(leaf)
    dtype = leaf.dtype if hasattr(leaf, "dtype") else jnp.result_type(leaf)
    return shape, np.dtype(dtype)


def _describe(shape, dtype) -> str:
    return f"{jnp.dtype(dtype).name}{list(shape)}"


def _fit(group: str, template, meta: dict, arrays: dict, path: Path):
    """Arrays of one group put into the template's structure; mismatch raises."""
    flat, treedef = jax.tree_util.tree_flatten_with_path(template)
    want = {jax.tree_util.keystr(p): leaf for p, leaf in flat}
    got = {leaf["path"]: leaf for leaf in meta["leaves"] if leaf["group"] == group}
    missing = [p for p in want if p not in got]
    extra = [p for p in got if p not in want]
    if missing or extra:
        raise CheckpointMismatchError(
            path, f"{group} does not fit the template (another architecture or optimiser?): "
            f"template leaves missing from the file: {missing[:4]}, file leaves not in the "
            f"template: {extra[:4]}")
    leaves = []
    for keypath, leaf in want.items():
        shape, dtype = _template_leaf(leaf)
        record = got[keypath]
        if tuple(record["shape"]) != shape or record["np_dtype"] != dtype:
            raise CheckpointMismatchError(
                path, f"{group}{keypath} is {_describe(record['shape'], record['np_dtype'])} "
                f"in the file but {_describe(shape, dtype)} in the template")
        sharding = getattr(leaf, "sharding", None)
        array = arrays[record["name"]]
        leaves.append(jax.device_put(array, sharding) if sharding is not None
                      else jnp.asarray(array))
    return jax.tree_util.tree_unflatten(treedef, leaves)


def _key(meta: dict, arrays: dict, path: Path):
    records = [leaf for leaf in meta["leaves"] if leaf["group"] == "key"]
    if meta["key"] is None:
        if records:
            raise CorruptCheckpointError(path, "key data without a key record")
        return None
    if len(records) != 1:
        raise CorruptCheckpointError(path, "a key record without exactly one key array")
    data = jnp.asarray(arrays[records[0]["name"]])
    if not meta["key"]["typed"]:
        return data
    try:
        return jax.random.wrap_key_data(data, impl=meta["key"]["impl"])
    except (TypeError, ValueError, KeyError) as error:
        raise CorruptCheckpointError(path, f"key data do not make a PRNG key ({error})") from None


def _check_finite(meta: dict, arrays: dict, path: Path) -> None:
    for leaf in meta["leaves"]:
        if leaf["group"] != "key" and not _finite(arrays[leaf["name"]]):
            raise NonFiniteStateError(
                path, f"{leaf['group']}{leaf['path']} holds NaN or infinite values; a "
                "non-finite state is restored only with allow_nonfinite=True")


def restore(path: str | os.PathLike, template: TrainState, *,
            allow_nonfinite: bool = False) -> TrainState:
    """Read a checkpoint back into the structure of ``template``.

    Args:
      path: a checkpoint file.
      template: a :class:`TrainState` (or any object with ``params`` and ``opt_state``)
        whose params and opt_state have the wanted structure, shapes and dtypes; the
        leaves may be arrays or ``jax.ShapeDtypeStruct`` (a leaf with a ``sharding``
        is placed with it). Its other fields are not used.
      allow_nonfinite: return a state whose parameters or optimiser state hold NaN or
        infinite values (one saved with ``save(..., allow_nonfinite=True)``); by
        default such a file raises :class:`NonFiniteStateError`.
    Returns:
      The saved :class:`TrainState`; arrays are JAX arrays, the key is a typed key if
      it was saved as one.
    Raises:
      FileNotFoundError: no such file.
      CorruptCheckpointError: unreadable, truncated, checksum mismatch, pickled object
        arrays, malformed metadata.
      CheckpointMismatchError: intact but another structure, shape or dtype than the
        template, or another format version.
      NonFiniteStateError: NaN or infinite values, unless ``allow_nonfinite``.
    All three are ``CheckpointError``, a ``ValueError`` naming the file.
    """
    path = Path(path)
    meta, arrays = _read(path)
    if not allow_nonfinite:
        _check_finite(meta, arrays, path)
    params = _fit("params", template.params, meta, arrays, path)
    opt_state = _fit("opt_state", template.opt_state, meta, arrays, path)
    return TrainState(params, opt_state, _key(meta, arrays, path), meta["epoch"],
                      meta["step"], meta["history"], meta["config"])


def restore_latest(folder: str | os.PathLike, template: TrainState, *,
                   allow_nonfinite: bool = False) -> Restored | None:
    """The newest checkpoint in folder that is intact, finite and fits the template.

    Newer files that fail (unreadable, truncated, forged sizes, another architecture,
    NaN or infinite values unless ``allow_nonfinite``, not a regular file) are skipped
    and listed in ``Restored.skipped`` with the reason; older ones stay usable. Returns
    None when the folder holds no checkpoint at all (a fresh start).

    Raises:
      NoValidCheckpointError: there are checkpoints but none is usable.
    """
    folder = Path(folder)
    found, odd = _scan(folder)
    skipped = list(odd)
    for _, path in reversed(found):
        try:
            state = restore(path, template, allow_nonfinite=allow_nonfinite)
        except FileNotFoundError:  # removed since the scan
            continue
        except CheckpointError as error:
            skipped.append(Skipped(path, error.reason))
            continue
        return Restored(state, path, tuple(skipped))
    if skipped:
        raise NoValidCheckpointError(folder, tuple(skipped))
    return None


# --- training with checkpoints -------------------------------------------------------------

# Settings that decide the trajectory: a resumed run must have the same ones.
_TRAJECTORY = ("model", "m", "alpha", "batch_size", "source", "optimizer")


def _same_key(a, b) -> bool:
    def raw(k):
        typed = jax.dtypes.issubdtype(jnp.result_type(k), jax.dtypes.prng_key)
        return np.asarray(jax.random.key_data(k) if typed else k)

    return np.array_equal(raw(a), raw(b))


class Checkpoints:
    """``sgd.train(..., checkpoints=Checkpoints(folder))``: save every few epochs, resume.

    With ``resume=True`` the newest valid checkpoint in ``folder`` is restored (newer
    broken ones are skipped and logged) and training continues at its epoch with its
    parameters, optimiser state and history, so the result equals the uninterrupted
    run's bit for bit on the same machine; an empty or missing folder starts afresh. A
    checkpoint is written after every ``every``-th epoch and after the last; ``keep``
    newest stay. A non-finite loss raises ``sgd.NonFiniteError``, and no checkpoint is
    written for that epoch, so the newest checkpoint is the last finite state.

    Args:
      folder: the checkpoint folder; only ``checkpoint_<step>.npz`` files are written.
      every: epochs between checkpoints, >= 1.
      keep: checkpoints kept (None: all).
      resume: False refuses a folder that already holds checkpoints instead of
        overwriting them.
      config: extra JSON configuration stored with each checkpoint.
      log: called with one line of text per event (resumed from, skipped).
    A checkpoint written with other trajectory settings (model, number of examples,
    alpha, batch size, gradient source, optimiser) or another key raises ValueError.
    """

    def __init__(self, folder: str | os.PathLike, *, every: int = 1, keep: int | None = 3,
                 resume: bool = True, config: dict | None = None,
                 log: Callable[[str], Any] | None = None):
        self.folder = Path(folder)
        self.every = checks.integer(every, "every", 1)
        self.keep, self.resume = keep, resume
        self.extra = _to_json(config if config is not None else {}, "config")
        self.log = log if log is not None else (lambda message: None)
        self.run_config: dict | None = None

    def start(self, model, params, opt_state, key, *, epochs, m, alpha, batch_size, source,
              optimizer):
        """The state to continue from, (params, opt_state, epoch, history), or None."""
        self.run_config = {
            "model": repr(model), "m": int(m), "alpha": float(alpha),
            "batch_size": int(batch_size), "source": source,
            "optimizer": None if optimizer is None else type(optimizer).__name__,
            "extra": self.extra,
        }
        if not self.resume:
            if list_checkpoints(self.folder):
                raise ValueError(f"{self.folder} already holds checkpoints; resume from them "
                                 "(resume=True) or choose an empty folder")
            return None
        restored = restore_latest(self.folder, TrainState(params, opt_state))
        if restored is None:
            self.log(f"no checkpoint in {self.folder}; starting at epoch 0")
            return None
        for skipped in restored.skipped:
            self.log(f"skipped {skipped.path}: {skipped.reason}")
        state = restored.state
        for name in _TRAJECTORY:
            if state.config.get(name) != self.run_config[name]:
                raise ValueError(
                    f"{restored.path} was written by a run with {name}="
                    f"{state.config.get(name)!r}, this run has {self.run_config[name]!r}; "
                    "resuming would not continue that run")
        if state.key is None or not _same_key(state.key, key):
            raise ValueError(f"{restored.path} was written with another PRNG key")
        self.log(f"resumed from {restored.path} at epoch {state.epoch}")
        return state.params, state.opt_state, min(state.epoch, epochs), state.history

    def after_epoch(self, on_epoch: Callable | None, key, steps_per_epoch: int, epochs: int):
        """``on_epoch`` preceded by the checkpoint of that epoch, where one is due."""
        def save_then(e, params, opt_state, history):
            if (e + 1) % self.every == 0 or e + 1 == epochs:
                state = TrainState(parallel.local_copy(params), parallel.local_copy(opt_state),
                                   key, e + 1, (e + 1) * steps_per_epoch, history,
                                   self.run_config)
                if jax.process_index() == 0:
                    save(self.folder, state, keep=self.keep)
            if on_epoch is not None:
                on_epoch(e, params, opt_state, history)

        return save_then

    def note(self, error: Exception) -> None:
        """Add to a training error where the last finite state is."""
        newest = list_checkpoints(self.folder)
        error.add_note(f"checkpoints in {self.folder} end at the last finite state: "
                       + (newest[-1][1].name if newest else "none written"))


def train(model, params, X, Y, *, folder: str | os.PathLike, key: jax.Array, epochs: int,
          every: int = 1, keep: int | None = 3, resume: bool = True,
          config: dict | None = None, log: Callable[[str], Any] | None = None,
          **train_kwargs) -> tuple[Any, dict]:
    """``sgd.train(..., checkpoints=Checkpoints(folder, every=..., ...))``.

    Kept for the code that calls it; ``sgd.train`` with ``checkpoints=`` is the one loop.
    ``epochs`` is the total count, the epochs already done included.
    """
    checkpoints = Checkpoints(folder, every=every, keep=keep, resume=resume, config=config,
                              log=log)
    return sgd.train(model, params, X, Y, key=key, epochs=epochs, checkpoints=checkpoints,
                     **train_kwargs)
