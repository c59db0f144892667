"""The README's Python examples run as a new user would paste them, and print what they say."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)


def run(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=600, cwd=README.parent)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def errors_in(table: str) -> list[float]:
    return [float(x) for x in re.findall(r"\d\.\d\de[-+]\d\d", table)]


def test_there_are_two_examples():
    assert len(BLOCKS) == 2


@pytest.mark.parametrize("i", range(len(BLOCKS)))
def test_example_runs(i):
    out = run(BLOCKS[i])
    assert "manual/autodiff" in out
    numbers = errors_in(out)
    assert numbers and max(numbers) < 0.1
    if i == 1:  # float64: the new layer's backward against jax.vjp and finite differences
        rows = [line.split() for line in out.splitlines() if line.split()[:1] in
                (["a_prev"], ["['s']"])]
        assert len(rows) == 2
        assert all(float(vjp) < 1e-12 and float(fd) < 1e-6 for _, vjp, fd, *_ in rows)


def test_equation_map_names_exist():
    import jaxnn

    table = README.read_text().split("## Equation → code")[1].split("## ")[0]
    names = {n for n in re.findall(r"`([A-Za-z_][\w.]*\.[\w]+)`", table)
             if not n.startswith(("jax.", "lax."))}
    assert len(names) > 30
    for name in sorted(names):
        obj = jaxnn
        for part in name.split("."):
            obj = getattr(obj, part, None)
            assert obj is not None, f"README names {name}, which jaxnn does not have"
