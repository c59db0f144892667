"""experiments/common: run folders stay inside the folder the user chose; JSON is safe."""

import argparse
import json
import math
import platform
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from experiments import common


def args(tmp_path, **kw):
    base = {"runs_dir": str(tmp_path), "out": None, "overwrite": False}
    return argparse.Namespace(**(base | kw))


@pytest.mark.parametrize("name", ["../escape", "a/b", "/abs", "..", ".", "", "x" * 200, "a\0b",
                                  "-rf", "run\n", "run\r", "a\nb", "\nrun"])
def test_names_that_would_leave_the_folder_are_refused(tmp_path, name):
    with pytest.raises(ValueError, match="letters, digits"):
        common.safe_name(name)
    with pytest.raises(ValueError):
        common.run_dir(args(tmp_path, out=name), "mlp_digits")
    with pytest.raises(ValueError):
        common.inside(tmp_path, name)
    assert list(tmp_path.rglob("*")) == [] or all(
        p.resolve().is_relative_to(tmp_path.resolve()) for p in tmp_path.rglob("*"))


def test_run_dir_never_overwrites_unless_asked(tmp_path):
    first = common.run_dir(args(tmp_path, out="run-1"), "exp")
    assert first == tmp_path / "exp" / "run-1" and first.is_dir()
    with pytest.raises(SystemExit, match="exists"):
        common.run_dir(args(tmp_path, out="run-1"), "exp")
    assert common.run_dir(args(tmp_path, out="run-1", overwrite=True), "exp") == first
    a = common.run_dir(args(tmp_path), "exp")
    b = common.run_dir(args(tmp_path), "exp")
    assert a != b and a.parent == b.parent == tmp_path / "exp"


def test_write_json_is_atomic_and_strict(tmp_path):
    path = common.write_json(tmp_path / "results.json",
                             {"x": np.float32(1.5), "nan": math.nan, "a": np.arange(3)})
    assert json.loads(path.read_text()) == {"x": 1.5, "nan": None, "a": [0, 1, 2]}
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]  # no temporary left


_FAULTS = """
import ctypes, resource, sys
from experiments import common
applied = common.retain_freed_memory() if sys.argv[1] == "retain" else None
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
n = 64 * 2**20  # one block over glibc's largest mmap threshold (32 MiB), as XLA's temporaries
def touch():
    block = libc.malloc(n)
    ctypes.memset(block, 1, n)
    libc.free(block)
touch()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
touch()
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_retain_freed_memory_reuses_a_freed_block_without_page_faults():
    faults = {}
    for mode in ("retain", "system"):
        out = subprocess.run([sys.executable, "-c", _FAULTS, mode], capture_output=True,
                             text=True, check=True, cwd=Path(__file__).parent.parent)
        applied, faults[mode] = out.stdout.split()
        assert applied == ("True" if mode == "retain" else "None")
    pages = 64 * 2**20 // 4096  # 16,384 pages of 4 KiB
    assert int(faults["system"]) > pages // 2  # mapped afresh: every page faults again
    assert int(faults["retain"]) < pages // 20  # the freed block is reused
