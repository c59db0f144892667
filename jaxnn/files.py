"""Opening and reading files that are hostile until checked.

Every loader in jaxnn (IDX, CIFAR-10, checkpoints) opens its file with
:func:`open_regular`: a FIFO, a device or a directory is refused from its ``os.stat``
before it is opened, and the opened descriptor is checked again with ``fstat`` (a file
swapped for a FIFO in between is refused too), so no loader can block on a FIFO or
read an endless device. Every size a header claims is compared with the file's real
size (``fstat``) and with a documented limit before anything is allocated;
:func:`gunzip` decompresses in bounded steps and stops at the number of bytes the
caller expects.

A failure is a :class:`BadFileError` (a ``ValueError``) naming the file and what was
wrong; a missing file stays ``FileNotFoundError``.
"""

from __future__ import annotations

import os
import stat
import zlib
from collections.abc import Callable
from typing import IO

__all__ = ["GZIP_CHUNK", "MAX_GZIP_RATIO", "BadFileError", "gunzip", "open_regular",
           "read_exactly"]

MAX_GZIP_RATIO = 32
"""The most a gzipped data file may expand: the header's claimed size must be at most
this many times the compressed file (MNIST's files expand 2 to 5 times)."""

GZIP_CHUNK = 2**20
"""Bytes of output produced per decompression step."""


class BadFileError(ValueError):
    """A file cannot be read as what it claims to be; ``path`` and ``reason`` say why."""

    def __init__(self, path, reason: str):
        self.path, self.reason = str(path), reason
        super().__init__(f"{path}: {reason}")


_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
          (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
          (stat.S_ISSOCK, "a socket"))


def _kind(mode: int) -> str:
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def open_regular(path: str | os.PathLike, what: str = "data") -> tuple[IO[bytes], int]:
    """Open ``path`` for reading if it is a regular file; return (binary file, size).

    Symbolic links are followed to what they name, which must be a regular file. The
    file is opened with ``O_NONBLOCK`` so that even a file replaced by a FIFO between
    the ``stat`` and the ``open`` cannot block; ``fstat`` then checks what was opened.

    Raises:
      FileNotFoundError: no such file.
      BadFileError: a directory, FIFO, device or socket, or unreadable.
    """
    path = os.fspath(path)
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise FileNotFoundError(f"{what} file not found: {path}") from None
    except OSError as error:
        raise BadFileError(path, f"cannot read the {what} file ({error.strerror})") from None
    if not stat.S_ISREG(mode):
        raise BadFileError(path, f"is {_kind(mode)}, not a regular {what} file; refused "
                                 "without opening it")
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0)
                     | getattr(os, "O_BINARY", 0))
    except FileNotFoundError:
        raise FileNotFoundError(f"{what} file not found: {path}") from None
    except OSError as error:
        raise BadFileError(path, f"cannot open the {what} file ({error.strerror})") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise BadFileError(path, f"is {_kind(info.st_mode)}, not a regular {what} file")
        return os.fdopen(fd, "rb"), info.st_size
    except BaseException:
        os.close(fd)
        raise


def read_exactly(file: IO[bytes], n: int, path, what: str) -> bytes:
    """``n`` bytes from ``file`` (the caller has checked ``n`` against the file's size)."""
    data = file.read(n)
    if len(data) != n:
        raise BadFileError(path, f"{what}: expected {n} bytes, the file ended after "
                                 f"{len(data)} (truncated)")
    return data


def gunzip(file: IO[bytes], path, limit: Callable[[bytes], int], head: int = 1024) -> bytearray:
    """Decompress a gzip stream (one or more members) in steps of at most ``GZIP_CHUNK``.

    ``limit(first)`` is called once with the first ``head`` bytes of output (all of it
    if the stream is shorter) and returns the exact size the whole output must have,
    after checking the header those bytes hold; from then on each step asks zlib for
    no more than the rest of that size plus one byte, so a stream that would expand
    further (a "zip bomb", many members of zeros) is refused after at most that much
    work and memory.

    Raises:
      BadFileError: corrupt or truncated gzip data, or an output of another size than
        ``limit`` returned (``limit`` raises ``BadFileError`` itself for a bad header).
    """
    out = bytearray()
    expected: int | None = None
    member = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)

    def step() -> int:
        return GZIP_CHUNK if expected is None else max(1, min(GZIP_CHUNK, expected + 1 - len(out)))

    def check() -> None:
        nonlocal expected
        if expected is None and len(out) >= head:
            expected = limit(bytes(out[:head]))
        if expected is not None and len(out) > expected:
            raise BadFileError(path, f"the gzip data decompress to more than the {expected} "
                                     "bytes the header claims; refused before decompressing "
                                     "the rest")

    try:
        while data := file.read(GZIP_CHUNK):
            while True:
                if member.eof:  # the previous member ended: another one follows
                    if not data:
                        break
                    member = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
                size = step()
                piece = member.decompress(data, size)
                out += piece
                data = member.unused_data if member.eof else member.unconsumed_tail
                check()
                if not data and not member.eof and len(piece) < size:
                    break  # this member needs more input
    except zlib.error as error:
        raise BadFileError(path, f"corrupt gzip data ({error})") from None
    if not member.eof:
        raise BadFileError(path, "truncated gzip stream (the last member does not end)")
    if expected is None:
        expected = limit(bytes(out))
        check()
    if len(out) != expected:
        raise BadFileError(path, f"expected {expected} bytes after decompression, got "
                                 f"{len(out)} (truncated)")
    return out
