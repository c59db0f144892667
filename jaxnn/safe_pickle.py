"""Restricted unpickling for data files that are pickles (CIFAR-10 python batches).

A pickle is a program: loading one with plain ``pickle.load`` calls whatever global
it names (``os.system``, ``builtins.open``, ...). ``safe_load`` runs the pickle with
an unpickler whose ``find_class`` admits only an explicit table of callables and
refuses every other global with :class:`UnsafePickleError`, before anything is
called. Containers, numbers, strings and bytes need no globals at all; the default
table adds the few numpy callables that rebuild arrays, dtypes and numpy scalars.

Nothing is imported by name while loading: the table maps ``(module, name)`` to an
object that is already imported, so a pickle cannot make Python import a module.
"""

from __future__ import annotations

import codecs
import io
import os
import pickle
from collections.abc import Callable, Mapping
from typing import IO, Any

import numpy as np

if np.lib.NumpyVersion(np.__version__) >= "2.0.0":
    from numpy._core import multiarray as _multiarray
    from numpy._core import numeric as _numeric
else:  # pragma: no cover - numpy 1.x
    from numpy.core import multiarray as _multiarray
    from numpy.core import numeric as _numeric

__all__ = ["NUMPY_ARRAY_GLOBALS", "UnsafePickleError", "safe_load"]


class UnsafePickleError(pickle.UnpicklingError, ValueError):
    """A pickle named a global that is not in the allowed table.

    Subclasses both ``pickle.UnpicklingError`` and ``ValueError``. The attributes
    ``module``, ``name`` and ``path`` say what was refused and where.
    """

    def __init__(self, module: str, name: str, path: str):
        self.module = module
        self.name = name
        self.path = path
        super().__init__(
            f"{path}: refused to load global {module}.{name}; this file is not a plain "
            "data pickle (only dicts, lists, strings, bytes, numbers and numpy arrays "
            "are admitted)"
        )


def _latin1_encode(text: str, encoding: str = "latin1", errors: str = "strict") -> bytes:
    """``_codecs.encode`` as pickle protocols 0-2 use it for bytes: latin-1 only."""
    if codecs.lookup(encoding).name != "iso8859-1":
        raise pickle.UnpicklingError(
            f"_codecs.encode is admitted only with the latin1 encoding, got {encoding!r}"
        )
    return codecs.encode(text, "latin1", errors)


def _numpy_globals() -> dict[tuple[str, str], Callable[..., Any]]:
    table: dict[tuple[str, str], Callable[..., Any]] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): _latin1_encode,
    }
    # numpy 1.x writes numpy.core.*, numpy 2.x writes numpy._core.*; both are
    # answered with the objects imported above, never by importing the named module.
    for package in ("numpy.core", "numpy._core"):
        table[(f"{package}.multiarray", "_reconstruct")] = _multiarray._reconstruct
        table[(f"{package}.multiarray", "scalar")] = _multiarray.scalar
        table[(f"{package}.numeric", "_frombuffer")] = _numeric._frombuffer
    return table


NUMPY_ARRAY_GLOBALS: Mapping[tuple[str, str], Callable[..., Any]] = _numpy_globals()
"""The default table: ``(module, name) -> callable`` for numpy arrays, dtypes, scalars."""


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(
        self,
        file: IO[bytes],
        allowed: Mapping[tuple[str, str], Any],
        path: str,
        encoding: str,
    ):
        super().__init__(file, encoding=encoding)
        self._allowed = allowed
        self._path = path

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise UnsafePickleError(module, name, self._path) from None

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError(f"{self._path}: persistent ids are not admitted, got {pid!r}")


def safe_load(
    path_or_file: str | os.PathLike[str] | IO[bytes],
    allowed: Mapping[tuple[str, str], Any] | None = None,
    *,
    encoding: str = "bytes",
) -> Any:
    """Load one pickle, admitting only the globals in ``allowed``.

    Args:
      path_or_file: a path, or a binary file object open for reading.
      allowed: mapping ``(module, name) -> object`` of the globals the pickle may
        name; the mapped object is what the pickle gets. ``None`` means
        :data:`NUMPY_ARRAY_GLOBALS`; ``{}`` admits no global at all.
      encoding: how Python 2 ``str`` objects are decoded; the default ``"bytes"``
        keeps them as ``bytes``, which is what CIFAR-10 batches expect
        (keys ``b"data"``, ``b"labels"``).

    Returns:
      The unpickled object.

    Raises:
      FileNotFoundError: the path does not exist.
      UnsafePickleError: the pickle names a global that is not admitted
        (a ``ValueError``); nothing it names is called.
      ValueError: the file is truncated or not a pickle; the message names the path.
    """
    table = NUMPY_ARRAY_GLOBALS if allowed is None else allowed
    if isinstance(path_or_file, str | os.PathLike):
        path = os.fspath(path_or_file)
        try:
            with open(path, "rb") as file:
                return _load(file, table, path, encoding)
        except FileNotFoundError:
            raise FileNotFoundError(f"pickle file not found: {path}") from None
    if not (hasattr(path_or_file, "read") and hasattr(path_or_file, "readline")):
        raise TypeError(
            f"safe_load expected a path or a binary file object, got {type(path_or_file).__name__}"
        )
    name = getattr(path_or_file, "name", None)
    path = str(name) if name is not None else f"<{type(path_or_file).__name__}>"
    return _load(path_or_file, table, path, encoding)


def _load(file: IO[bytes], allowed: Mapping[tuple[str, str], Any], path: str, encoding: str):
    if isinstance(file, io.TextIOBase):
        raise TypeError(f"{path}: safe_load needs a binary file object, got a text file")
    try:
        return _RestrictedUnpickler(file, allowed, path, encoding).load()
    except UnsafePickleError:
        raise
    except EOFError:
        raise ValueError(f"{path}: pickle ended early (truncated file)") from None
    except Exception as error:  # any malformed stream: report it as bad data, with the path
        reason = f"{type(error).__name__}: {error}"
        raise ValueError(f"{path}: not a valid data pickle ({reason})") from error
