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
    with pytest.raises(common.UsageError, match="--out: run name must be"):
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


def test_table_prints_numbers_for_reading():
    rows = [{"name": "a", "count": 2688.0, "loss": 0.0012345678, "manual/autodiff": 0.0,
             "seconds": 28059.47e-6, "acc": 0.98051, "note": "n"},
            {"name": "b", "count": 12, "loss": 123456.0, "manual/autodiff": 3.14159e-15,
             "seconds": 125.0, "acc": 1.0}]
    lines = common.table(rows, formats={"acc": "percent"}).splitlines()
    assert lines[0].split() == ["name", "count", "loss", "manual/autodiff", "seconds", "acc",
                                "note"]
    first, second = (line.split("  ") for line in lines[2:])
    first = [c.strip() for c in first if c.strip()]
    second = [c.strip() for c in second if c.strip()]
    assert first == ["a", "2688", "0.001235", "identical", "28.1 ms", "98.05%", "n"]
    assert second == ["b", "12", "123456", "3.1e-15", "2 min 05 s", "100.00%"]


@pytest.mark.parametrize("seconds, text", [
    (0.0, "0 s"), (3.2e-8, "32.0 ns"), (28059.47e-6, "28.1 ms"), (0.9996, "1.00 s"),
    (3.21, "3.21 s"), (59.4, "59.4 s"), (61.0, "1 min 01 s"), (float("nan"), "n/a")])
def test_durations_take_the_unit_that_suits_them(seconds, text):
    assert common.duration(seconds) == text


@pytest.mark.parametrize("value, text", [
    (0.0, "identical"), (1e-15, "1.0e-15"), (2.5e-7, "2.5e-07"), (0.0123, "0.012"),
    (float("nan"), "n/a")])
def test_differences_say_identical_only_when_exactly_equal(value, text):
    assert common.difference(value) == text


@pytest.mark.parametrize("value, text", [
    (2688.0, "2688"), (7, "7"), (np.int64(3), "3"), (0.97493, "0.9749"), (1.23456e-5, "1.235e-05"),
    (float("inf"), "inf"), (True, "True")])
def test_numbers_show_integers_as_integers_and_four_significant_figures(value, text):
    assert common.number(value) == text


def test_schedules_give_one_rate_per_epoch():
    assert common.schedule(0.5, 3) == [0.5, 0.5, 0.5]
    rates = common.schedule(0.2, 4, "cosine")
    assert rates == pytest.approx([0.2, 0.2 * (1 + math.cos(math.pi / 4)) / 2, 0.1,
                                   0.2 * (1 + math.cos(3 * math.pi / 4)) / 2])
    with pytest.raises(ValueError, match="schedule"):
        common.schedule(0.1, 2, "step")
