"""experiments/common: run folders stay inside the folder the user chose; JSON is safe."""

import argparse
import json
import math

import numpy as np
import pytest

from experiments import common


def args(tmp_path, **kw):
    base = {"runs_dir": str(tmp_path), "out": None, "overwrite": False}
    return argparse.Namespace(**(base | kw))


@pytest.mark.parametrize("name", ["../escape", "a/b", "/abs", "..", ".", "", "x" * 200, "a\0b",
                                  "-rf"])
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
