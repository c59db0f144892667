"""Restricted unpickling for data files that are pickles (CIFAR-10 python batches).

A pickle is a program: loading one with plain ``pickle.load`` calls whatever global
it names (``os.system``, ``builtins.open``, ...), calls ``__setstate__`` on whatever it
built, and trusts every length it states. ``safe_load`` runs the pickle on Python's
own opcode interpreter (``pickle._Unpickler``) with these opcodes narrowed:

- GLOBAL / STACK_GLOBAL admit only an explicit table ``(module, name) -> object`` of
  already-imported objects and refuse every other global with
  :class:`UnsafePickleError` before anything is called; no module is imported by name.
- REDUCE calls only the table's functions, never a class: ``numpy.ndarray`` is in the
  table only as the argument of numpy's ``_reconstruct``, so a pickle cannot call
  ``ndarray(shape, dtype, buffer, offset, strides)`` with a buffer, offset or strides
  of its choosing.
- BUILD (``__setstate__``) runs only on an object that ``_reconstruct`` or ``dtype``
  has just made in this load, once, with a state that is checked first: an array's
  byte string has exactly the size its shape and dtype need, its dtype is a plain
  number type (no objects), it is C-ordered. Nothing else can be given state, so an
  admitted function cannot be changed (``__defaults__``) by a pickle.
- Objects, extensions, persistent ids and out-of-band buffers (INST, OBJ, NEWOBJ,
  NEWOBJ_EX, EXT1/2/4, PERSID, BINPERSID, NEXT_BUFFER, READONLY_BUFFER) are refused.
- Items are added only to lists, dicts and sets; dict keys and set members must be
  strings, bytes, numbers, booleans or None (so no hash of a deeply nested key).
- Every length the stream states (strings, bytes, frames) is checked against the
  bytes the file has left before anything is allocated, and the file itself may hold
  at most :data:`MAX_PICKLE_BYTES`.

After loading, every array in the result is checked again (exactly ``numpy.ndarray``,
C-contiguous, owning its data or viewing a buffer of exactly its size) and nesting
deeper than :data:`MAX_DEPTH` is refused. Every failure is a ``ValueError`` naming the
file: ``MemoryError``, ``OverflowError`` and ``RecursionError`` do not escape.
"""

from __future__ import annotations

import codecs
import io
import math
import os
import pickle
from collections.abc import Callable, Mapping
from typing import IO, Any

import numpy as np

from jaxnn.files import BadFileError, open_regular

if np.lib.NumpyVersion(np.__version__) >= "2.0.0":
    from numpy._core import multiarray as _multiarray
else:  # pragma: no cover - numpy 1.x
    from numpy.core import multiarray as _multiarray

__all__ = ["MAX_DEPTH", "MAX_PICKLE_BYTES", "NUMPY_ARRAY_GLOBALS", "UnsafePickleError",
           "safe_load"]

MAX_PICKLE_BYTES = 2**30
"""The largest pickle file ``safe_load`` reads (a CIFAR-10 batch is 31 MB, a CIFAR-100
training batch 161 MB)."""

MAX_DEPTH = 100
"""The deepest nesting of containers a loaded pickle may have."""


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
            f"{path}: refused to load global {_plain(module)}.{_plain(name)}; this file is "
            "not a plain data pickle (only dicts, lists, strings, bytes, numbers and numpy "
            "arrays are admitted)"
        )


class _Refused(pickle.UnpicklingError, ValueError):
    """The stream asked for something a data pickle never needs."""


def _plain(text: str) -> str:
    return text if len(text) <= 80 and text.isprintable() else _short(text)


def _short(text: Any, limit: int = 80) -> str:
    """A bounded description of untrusted text, never a recursive repr."""
    if isinstance(text, str | bytes):
        shown = repr(text[:limit])
        return shown + ("..." if len(text) > limit else "")
    return type(text).__name__


# ------------------------------------------------------------------ the numpy table

_PLAIN_KINDS = "biufc"


def _plain_dtype(dtype: Any, what: str) -> np.dtype:
    if not isinstance(dtype, np.dtype) or dtype.kind not in _PLAIN_KINDS or dtype.hasobject \
            or dtype.fields is not None or dtype.subdtype is not None or dtype.itemsize == 0:
        raise _Refused(f"{what}: expected a plain number dtype, got {_short(dtype)} "
                       f"{dtype if isinstance(dtype, np.dtype) else ''}")
    return dtype


def _check_shape(shape: Any, what: str) -> tuple[int, ...]:
    if type(shape) is not tuple or len(shape) > 32 or not all(
            type(n) is int and 0 <= n < 2**62 for n in shape):
        raise _Refused(f"{what}: expected a shape of at most 32 non-negative ints")
    return shape


def _reconstruct(cls: Any, shape: Any, typecode: Any) -> np.ndarray:
    """numpy's ``_reconstruct(ndarray, (0,), b'b')``: an empty array awaiting BUILD."""
    if cls is not np.ndarray or shape != (0,) or typecode not in (b"b", "b"):
        raise _Refused("_reconstruct is admitted only as numpy writes it: "
                       "(numpy.ndarray, (0,), b'b')")
    return _multiarray._reconstruct(np.ndarray, (0,), b"b")


def _dtype(name: Any, align: Any = False, copy: Any = True) -> np.dtype:
    """``numpy.dtype(name, False, True)`` for a plain number type code only."""
    if type(name) not in (str, bytes) or len(name) > 8 or align is not False or copy is not True:
        raise _Refused(f"numpy.dtype is admitted only for a number type code, got {_short(name)}")
    name = name.decode("ascii", "replace") if isinstance(name, bytes) else name
    try:
        dtype = np.dtype(name, False, True)
    except (TypeError, ValueError):
        raise _Refused(f"numpy.dtype: unknown type code {_short(name)}") from None
    return _plain_dtype(dtype, "numpy.dtype")


def _scalar(dtype: Any, data: Any = None) -> Any:
    """numpy's ``scalar(dtype, bytes)`` for a plain number dtype and exactly its bytes."""
    dtype = _plain_dtype(dtype, "numpy scalar")
    if type(data) is not bytes or len(data) != dtype.itemsize:
        raise _Refused(f"numpy scalar of {dtype}: expected {dtype.itemsize} bytes")
    return np.frombuffer(data, dtype)[0]


def _frombuffer(buffer: Any, dtype: Any, shape: Any, order: Any) -> np.ndarray:
    """numpy's in-band protocol 5 form, for exactly ``prod(shape)`` items, C order."""
    dtype = _plain_dtype(dtype, "numpy array")
    shape = _check_shape(shape, "numpy array")
    if type(buffer) not in (bytes, bytearray) or order != "C":
        raise _Refused("numpy arrays are admitted only with their bytes inline, in C order")
    if len(buffer) != math.prod(shape) * dtype.itemsize:
        raise _Refused(f"numpy array {shape} of {dtype} needs "
                       f"{math.prod(shape) * dtype.itemsize} bytes, the pickle holds "
                       f"{len(buffer)}")
    return np.frombuffer(buffer, dtype).reshape(shape)


def _build_array(array: np.ndarray, state: Any) -> None:
    """``ndarray.__setstate__`` after checking ``(version, shape, dtype, fortran, bytes)``."""
    if type(state) is not tuple or len(state) not in (4, 5):
        raise _Refused("array state: expected (version, shape, dtype, is_fortran, data)")
    shape, dtype, fortran, data = state[-4:]
    if len(state) == 5 and state[0] != 1:
        raise _Refused("array state: unknown version")
    shape = _check_shape(shape, "array state")
    dtype = _plain_dtype(dtype, "array state")
    if fortran is not False:
        raise _Refused("array state: only C-ordered arrays are admitted")
    if type(data) is not bytes:
        raise _Refused(f"array state: expected the data as bytes, got {_short(data)}")
    need = math.prod(shape) * dtype.itemsize
    if len(data) != need:
        raise _Refused(f"array state: shape {shape} of {dtype} needs {need} bytes, the "
                       f"pickle holds {len(data)}")
    array.__setstate__((1, shape, dtype, False, data))


_CANONICAL_DTYPE_STATE = {order: (3, order, None, None, None, -1, -1, 0) for order in "<>|="}


def _build_dtype(dtype: np.dtype, state: Any) -> None:
    """``dtype.__setstate__`` only with the state numpy writes for a plain number type."""
    if type(state) is tuple and len(state) > 1 and type(state[1]) is bytes:  # Python 2 str
        state = (state[0], state[1].decode("latin1"), *state[2:])
    if type(state) is not tuple or state not in _CANONICAL_DTYPE_STATE.values():
        raise _Refused("dtype state: only the byte order of a plain number type may be set")
    if dtype.itemsize == 1 and state[1] not in "|=":
        state = _CANONICAL_DTYPE_STATE["|"]
    dtype.__setstate__(state)


_BUILDS: dict[Any, Callable[[Any, Any], None]] = {_reconstruct: _build_array,
                                                   _dtype: _build_dtype}


def _latin1_encode(text: str, encoding: str = "latin1", errors: str = "strict") -> bytes:
    """``_codecs.encode`` as pickle protocols 0-2 use it for bytes: latin-1 only."""
    if type(text) is not str or type(encoding) is not str or type(errors) is not str:
        raise _Refused("_codecs.encode is admitted only for text")
    try:
        name = codecs.lookup(encoding).name
    except LookupError:
        name = None
    if name != "iso8859-1" or errors != "strict":
        raise _Refused(f"_codecs.encode is admitted only with the latin1 encoding, got "
                       f"{_short(encoding)}")
    return codecs.encode(text, "latin1")


def _numpy_globals() -> dict[tuple[str, str], Any]:
    table: dict[tuple[str, str], Any] = {
        ("numpy", "ndarray"): np.ndarray,  # a value for _reconstruct; classes are not called
        ("numpy", "dtype"): _dtype,
        ("_codecs", "encode"): _latin1_encode,
    }
    # numpy 1.x writes numpy.core.*, numpy 2.x writes numpy._core.*; both are
    # answered with the functions above, never by importing the named module.
    for package in ("numpy.core", "numpy._core"):
        table[(f"{package}.multiarray", "_reconstruct")] = _reconstruct
        table[(f"{package}.multiarray", "scalar")] = _scalar
        table[(f"{package}.numeric", "_frombuffer")] = _frombuffer
    return table


NUMPY_ARRAY_GLOBALS: Mapping[tuple[str, str], Any] = _numpy_globals()
"""The default table: ``(module, name) -> object`` for numpy arrays, dtypes, scalars.
Functions in it may be called by REDUCE; classes are only handed over as values."""


# --------------------------------------------------------------------- the unpickler


class _Bounded:
    """A file's ``read``/``readline``/``readinto`` that refuse to read past its end
    (a stated length longer than the rest of the file is refused before allocating)."""

    def __init__(self, file: IO[bytes], size: int, path: str):
        self._file, self._left, self._path = file, size, path
        self.size = size

    def _take(self, n: int) -> None:
        if n > self._left:
            raise _Refused(f"the pickle states a length of {n} bytes, the file has "
                           f"{self._left} left (truncated or forged)")
        self._left -= n

    def read(self, n: int = -1) -> bytes:
        n = self._left if n is None or n < 0 else n
        self._take(n)
        data = self._file.read(n)
        if len(data) != n:
            raise EOFError
        return data

    def readinto(self, buffer) -> int:
        self._take(len(buffer))
        return self._file.readinto(buffer)

    def readline(self) -> bytes:
        line = self._file.readline(self._left)
        self._left -= len(line)
        return line


_P = pickle
_FORBIDDEN = (_P.INST, _P.OBJ, _P.NEWOBJ, _P.NEWOBJ_EX, _P.EXT1, _P.EXT2, _P.EXT4,
              _P.PERSID, _P.BINPERSID, _P.NEXT_BUFFER, _P.READONLY_BUFFER)
_ATOMS = (str, bytes, int, float, complex, bool, type(None))


class _RestrictedUnpickler(pickle._Unpickler):
    dispatch = {code: load for code, load in pickle._Unpickler.dispatch.items()
                if bytes([code]) not in _FORBIDDEN}

    def __init__(self, file: _Bounded, allowed: Mapping[tuple[str, str], Any], path: str,
                 encoding: str):
        super().__init__(file, encoding=encoding)
        self._allowed = allowed
        self._callable = {id(v) for v in allowed.values()
                          if callable(v) and not isinstance(v, type)}
        self._path = path
        self._size = file.size
        self._awaiting: dict[int, tuple[Callable[[Any, Any], None], Any]] = {}

    def find_class(self, module: str, name: str) -> Any:
        if type(module) is not str or type(name) is not str:
            raise _Refused("a global's module and name must be text")
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise UnsafePickleError(module, name, self._path) from None

    def persistent_load(self, pid: Any) -> Any:
        raise _Refused("persistent ids are not admitted")

    def load_reduce(self):
        stack = self.stack
        args = stack.pop()
        func = stack[-1]
        if id(func) not in self._callable or type(args) is not tuple:
            what = (f"the class {func.__module__}.{func.__qualname__} (classes are never "
                    "called)" if isinstance(func, type) else _short(func))
            raise _Refused(f"REDUCE may call only admitted functions, got {what}")
        result = func(*args)
        if func in _BUILDS:
            self._awaiting[id(result)] = (_BUILDS[func], result)
        stack[-1] = result

    def load_build(self):
        stack = self.stack
        state = stack.pop()
        inst = stack[-1]
        build, expected = self._awaiting.pop(id(inst), (None, None))
        if build is None or expected is not inst:
            raise _Refused(f"BUILD (__setstate__) is admitted only on a numpy array or "
                           f"dtype just made, got {_short(inst)}")
        build(inst, state)

    def load_bytearray8(self):
        (n,) = _unpack_q(self.read(8))
        if n > self._size:
            raise _Refused(f"the pickle states a length of {n} bytes, the file has "
                           f"{self._size}")
        b = bytearray(n)
        self.readinto(b)
        self.append(b)

    def load_dict(self):
        items = self.pop_mark()
        for key in items[::2]:
            _check_key(key)
        self.append({items[i]: items[i + 1] for i in range(0, len(items), 2)})

    def load_setitem(self):
        stack = self.stack
        value = stack.pop()
        key = stack.pop()
        _target(stack[-1], dict)[_check_key(key)] = value

    def load_setitems(self):
        items = self.pop_mark()
        target = _target(self.stack[-1], dict)
        for i in range(0, len(items), 2):
            target[_check_key(items[i])] = items[i + 1]

    def load_append(self):
        value = self.stack.pop()
        _target(self.stack[-1], list).append(value)

    def load_appends(self):
        items = self.pop_mark()
        _target(self.stack[-1], list).extend(items)

    def load_additems(self):
        items = self.pop_mark()
        _target(self.stack[-1], set).update(_check_key(item) for item in items)

    def load_frozenset(self):
        items = self.pop_mark()
        self.append(frozenset(_check_key(item) for item in items))


def _unpack_q(data: bytes) -> tuple[int]:
    return (int.from_bytes(data, "little"),)


def _check_key(key: Any) -> Any:
    if type(key) not in _ATOMS:
        raise _Refused(f"dict keys and set members must be strings, bytes or numbers, got "
                       f"{_short(key)}")
    return key


def _target(obj: Any, kind: type) -> Any:
    if type(obj) is not kind:
        raise _Refused(f"items may be added only to a {kind.__name__}, got {_short(obj)}")
    return obj


_Q = {pickle.BYTEARRAY8[0]: _RestrictedUnpickler.load_bytearray8,
      pickle.REDUCE[0]: _RestrictedUnpickler.load_reduce,
      pickle.BUILD[0]: _RestrictedUnpickler.load_build,
      pickle.DICT[0]: _RestrictedUnpickler.load_dict,
      pickle.SETITEM[0]: _RestrictedUnpickler.load_setitem,
      pickle.SETITEMS[0]: _RestrictedUnpickler.load_setitems,
      pickle.APPEND[0]: _RestrictedUnpickler.load_append,
      pickle.APPENDS[0]: _RestrictedUnpickler.load_appends,
      pickle.ADDITEMS[0]: _RestrictedUnpickler.load_additems,
      pickle.FROZENSET[0]: _RestrictedUnpickler.load_frozenset}
_RestrictedUnpickler.dispatch.update(_Q)


# --------------------------------------------------------------------- after loading


def check_array(array: Any, what: str) -> np.ndarray:
    """Raise a ValueError unless ``array`` is a plain, C-contiguous ``numpy.ndarray`` that
    owns its data or views a bytes/bytearray buffer of exactly its size."""
    if type(array) is not np.ndarray:
        raise _Refused(f"{what}: expected a numpy.ndarray, got {type(array).__name__}")
    _plain_dtype(array.dtype, what)
    if not array.flags.c_contiguous:
        raise _Refused(f"{what}: expected a C-contiguous array")
    base = array.base
    while isinstance(base, np.ndarray):
        if base.nbytes != array.nbytes or not base.flags.c_contiguous:
            raise _Refused(f"{what}: views a buffer of another size")
        base = base.base
    if type(base) is memoryview:  # np.frombuffer of a bytearray
        base = base.obj if base.nbytes == array.nbytes and base.c_contiguous else ()
    if base is not None and not (type(base) in (bytes, bytearray)
                                 and len(base) == array.nbytes):
        raise _Refused(f"{what}: views a buffer of another size")
    return array


def _check_result(obj: Any) -> None:
    """Every array checked, nesting bounded; iterative, so no RecursionError."""
    seen: set[int] = set()
    todo = [(obj, 0)]
    while todo:
        item, depth = todo.pop()
        if type(item) in _ATOMS or isinstance(item, np.generic | np.dtype):
            continue
        if id(item) in seen:
            continue
        seen.add(id(item))
        if depth > MAX_DEPTH:
            raise _Refused(f"containers nested deeper than {MAX_DEPTH}")
        if type(item) is np.ndarray:
            check_array(item, "array in the pickle")
        elif type(item) is dict:
            todo.extend((v, depth + 1) for v in item.values())
        elif type(item) in (list, tuple, set, frozenset):
            todo.extend((v, depth + 1) for v in item)
        elif type(item) is not bytearray:
            raise _Refused(f"unexpected object of type {type(item).__name__} in the result")


def safe_load(
    path_or_file: str | os.PathLike[str] | IO[bytes],
    allowed: Mapping[tuple[str, str], Any] | None = None,
    *,
    encoding: str = "bytes",
) -> Any:
    """Load one pickle, admitting only the globals in ``allowed``.

    Args:
      path_or_file: a path (a regular file; FIFOs, devices and directories are refused
        before opening), or a binary file object open for reading.
      allowed: mapping ``(module, name) -> object`` of the globals the pickle may
        name; the mapped object is what the pickle gets (functions may be called,
        classes are only passed on). ``None`` means :data:`NUMPY_ARRAY_GLOBALS`;
        ``{}`` admits no global at all.
      encoding: how Python 2 ``str`` objects are decoded; the default ``"bytes"``
        keeps them as ``bytes``, which is what CIFAR-10 batches expect
        (keys ``b"data"``, ``b"labels"``).

    Returns:
      The unpickled object: dicts, lists, tuples, sets, strings, bytes, numbers, None,
      numpy arrays, dtypes and scalars, nested at most :data:`MAX_DEPTH` deep (an
      object of any other type that a function of ``allowed`` returned is refused).

    Raises:
      FileNotFoundError: the path does not exist.
      UnsafePickleError: the pickle names a global that is not admitted
        (a ``ValueError``); nothing it names is called.
      ValueError: the file is not a regular file, larger than
        :data:`MAX_PICKLE_BYTES`, truncated, not a pickle, or asks for something a
        data pickle never needs; the message names the path.
    """
    table = NUMPY_ARRAY_GLOBALS if allowed is None else allowed
    if isinstance(path_or_file, str | os.PathLike):
        path = os.fspath(path_or_file)
        file, size = open_regular(path, "pickle")
        with file:
            return _load(file, size, table, path, encoding)
    if not (hasattr(path_or_file, "read") and hasattr(path_or_file, "readline")):
        raise TypeError(
            f"safe_load expected a path or a binary file object, got {type(path_or_file).__name__}"
        )
    name = getattr(path_or_file, "name", None)
    path = str(name) if name is not None else f"<{type(path_or_file).__name__}>"
    if isinstance(path_or_file, io.TextIOBase):
        raise TypeError(f"{path}: safe_load needs a binary file object, got a text file")
    return _load(path_or_file, _size_left(path_or_file, path), table, path, encoding)


def _size_left(file: IO[bytes], path: str) -> int:
    try:
        start = file.tell()
        end = file.seek(0, io.SEEK_END)
        file.seek(start)
        return end - start
    except (OSError, AttributeError, ValueError):
        return MAX_PICKLE_BYTES  # not seekable: bounded by the limit alone


def _load(file: IO[bytes], size: int, allowed: Mapping[tuple[str, str], Any], path: str,
          encoding: str):
    if size > MAX_PICKLE_BYTES:
        raise BadFileError(path, f"a pickle of {size} bytes is larger than the "
                                 f"{MAX_PICKLE_BYTES}-byte limit (safe_pickle.MAX_PICKLE_BYTES)")
    try:
        result = _RestrictedUnpickler(_Bounded(file, size, path), allowed, path, encoding).load()
        _check_result(result)
        return result
    except UnsafePickleError:
        raise
    except EOFError:
        raise BadFileError(path, "pickle ended early (truncated file)") from None
    except _Refused as error:
        raise BadFileError(path, f"not a plain data pickle: {error}") from None
    except (Exception, RecursionError, MemoryError) as error:  # any malformed stream
        reason = f"{type(error).__name__}: {_short(str(error), 200)}"
        raise BadFileError(path, f"not a valid data pickle ({reason})") from None
