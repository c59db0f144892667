"""Experiments stopped early: Ctrl-C (a real SIGINT), SIGKILL and divergence end with one
line and an exit status, leave results.json marked incomplete, and a resumed run writes
the results.json an uninterrupted run writes."""

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from experiments import cifar10, cnn_images, common, mlp_digits
from jaxnn import sgd

from .helpers import write_cifar_batches

ROOT = Path(__file__).resolve().parent.parent


def saved(folder) -> dict:
    with open(Path(folder) / "results.json") as f:
        return json.load(f)


def comparable(results: dict) -> dict:
    """results.json without what differs between any two runs of one configuration: the
    configuration's resume/overwrite flags, the environment (argv), and timings."""

    def strip(x):
        if isinstance(x, dict):
            return {k: strip(v) for k, v in x.items()
                    if "seconds" not in k and k not in ("environment", "config")}
        if isinstance(x, list):
            return [strip(v) for v in x]
        return x

    return strip(results)


def interrupt_after(monkeypatch, calls: int, error=KeyboardInterrupt):
    """Make the ``calls``-th call of sgd.train (one epoch of one source) raise ``error``,
    as Ctrl-C inside it would."""
    real, count = sgd.train, {"n": 0}

    def train(*args, **kwargs):
        count["n"] += 1
        if count["n"] == calls:
            monkeypatch.setattr(sgd, "train", real)
            raise error()
        return real(*args, **kwargs)

    monkeypatch.setattr(sgd, "train", train)


def one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


MLP = ["--no-progress", "--train-limit", "128", "--hidden", "8", "--epochs", "5",
       "--batch-size", "32", "--seeds", "2"]


@pytest.mark.parametrize("source", ["manual", "autodiff", "both"])
def test_interrupted_mlp_digits_resumes_to_the_uninterrupted_results(tmp_path, monkeypatch,
                                                                     capsys, source):
    argv = MLP + ["--runs-dir", str(tmp_path), "--source", source]
    expected = saved(mlp_digits.main(argv + ["--out", "whole"])["folder"])
    capsys.readouterr()
    sources = 2 if source == "both" else 1
    interrupt_after(monkeypatch, calls=7 * sources + 1)  # seed 1, epoch 3 (after 2 epochs)
    assert common.run(mlp_digits.main, argv + ["--out", "cut"]) == 130
    line = one_line(capsys.readouterr().err)
    folder = tmp_path / "mlp_digits" / "cut"
    assert "interrupted (Ctrl-C) during MLP seed 1" in line and "epoch 3 of 5" in line
    assert f"results so far in {folder / 'results.json'}" in line
    assert str(folder / "checkpoints" / "seed1") in line and "(after epoch 2)" in line
    partial = saved(folder)
    assert partial["status"] == "interrupted" and partial["complete"] is False
    assert comparable(partial["runs"][0]) == comparable(expected["runs"][0])
    assert len(partial["runs"][1]["history"][
        "manual" if source != "autodiff" else "autodiff"]["loss"]) == 2

    # the same --out again: refused, naming the flag to pass
    assert common.run(mlp_digits.main, argv + ["--out", "cut"]) == 2
    assert "pass --resume to continue it" in one_line(capsys.readouterr().err)
    resume = shlex.split(line.split("to resume: ")[1])
    assert resume[:3] == ["python", "-m", "experiments.mlp_digits"] and "--resume" in resume
    assert common.run(mlp_digits.main, resume[3:]) == 0
    assert "resumed from" in capsys.readouterr().err
    resumed = saved(folder)
    assert resumed["status"] == "complete"
    assert comparable(resumed) == comparable(expected)


def test_resume_with_other_options_says_which(tmp_path, capsys):
    argv = MLP + ["--runs-dir", str(tmp_path), "--out", "r", "--source", "manual"]
    mlp_digits.main(argv)
    assert common.run(mlp_digits.main, argv + ["--resume", "--alpha", "0.1"]) == 2
    line = one_line(capsys.readouterr().err)
    assert "--alpha 0.5, this one has 0.1" in line and "--overwrite" in line


def test_diverging_run_stops_with_one_line_and_status_1(tmp_path, capsys):
    argv = MLP + ["--runs-dir", str(tmp_path), "--out", "big", "--alpha", "1e6"]
    assert common.run(mlp_digits.main, argv) == 1
    line = one_line(capsys.readouterr().err)
    assert re.match(r"mlp_digits: diverged \(non-finite loss or gradient at epoch \d+, step "
                    r"\d+\) during MLP seed 0", line)
    assert "(status diverged)" in line
    assert "--alpha 100000 --overwrite" in line
    partial = saved(tmp_path / "mlp_digits" / "big")
    assert partial["status"] == "diverged" and "non-finite" in partial["stopped"]["error"]
    assert common.run(mlp_digits.main, argv) == 2
    assert "holds a run that diverged" in one_line(capsys.readouterr().err)
    again = shlex.split(line.split("with a smaller step: ")[1])
    assert again[-3:] == ["--alpha", "100000", "--overwrite"] and again.count("--alpha") == 1
    assert common.run(mlp_digits.main, again[3:-3] + ["--overwrite"]) == 0
    assert saved(tmp_path / "mlp_digits" / "big")["status"] == "complete"


def test_interrupted_cnn_images_resumes_to_the_uninterrupted_results(tmp_path, monkeypatch,
                                                                     capsys):
    argv = ["--runs-dir", str(tmp_path), "--no-progress", "--smoke", "--task", "digits",
            "--seeds", "2", "--layers", "conv:4:3,pool:2,dense:8", "--no-shifts"]
    expected = saved(cnn_images.main(argv + ["--out", "whole"])["folder"])
    interrupt_after(monkeypatch, calls=3)  # seed 1, epoch 1
    assert common.run(cnn_images.main, argv + ["--out", "cut"]) == 130
    line = one_line(capsys.readouterr().err)
    assert "CNN digits seed 1" in line and "no checkpoint yet" not in line
    assert common.run(cnn_images.main, shlex.split(line.split("to resume: ")[1])[3:]) == 0
    assert comparable(saved(tmp_path / "cnn_images" / "cut")) == comparable(expected)


def test_interrupted_cifar10_resumes_to_the_uninterrupted_results(tmp_path, monkeypatch,
                                                                  capsys):
    data = write_cifar_batches(tmp_path / "cifar-10-batches-py", per_batch=16)
    argv = ["--runs-dir", str(tmp_path), "--no-progress", "--data", str(tmp_path),
            "--layers", "conv:4:3,pool:4,dense:8", "--epochs", "3", "--batch-size", "16"]
    expected = saved(cifar10.main(argv + ["--out", "whole"])["folder"])
    assert expected["summary"]["m_train"] == 5 * 16 and data.is_dir()
    interrupt_after(monkeypatch, calls=3)
    assert common.run(cifar10.main, argv + ["--out", "cut"]) == 130
    line = one_line(capsys.readouterr().err)
    assert "(after epoch 2)" in line
    assert common.run(cifar10.main, shlex.split(line.split("to resume: ")[1])[3:]) == 0
    assert comparable(saved(tmp_path / "cifar10" / "cut")) == comparable(expected)


def _start(command, folder, after: int = 0):
    """Start a training process; return it once it has written a checkpoint after epoch
    ``after``."""
    process = subprocess.Popen(command, cwd=ROOT, env=dict(os.environ, JAX_PLATFORMS="cpu"),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120

    def newest():
        return max((int(p.name[11:23]) for p in folder.glob("checkpoint_*.npz")), default=-1)

    while newest() <= after * 8:  # 8 steps per epoch
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "no checkpoint within 120 s"
        time.sleep(0.02)
    return process


def test_sigkill_then_sigint_then_resume_gives_the_uninterrupted_results(tmp_path, capsys):
    """A real training process killed outright (SIGKILL); resumed in a second process that
    gets Ctrl-C's SIGINT (one line, status 130); resumed again in a third with the command
    that line gives: its results.json is that of a run never interrupted."""
    command = [sys.executable, "-m", "experiments.mlp_digits", "--runs-dir", str(tmp_path),
               "--out", "cut", "--no-progress", "--train-limit", "256", "--hidden", "8",
               "--epochs", "100", "--seeds", "1", "--checkpoint-every", "2"]
    folder = tmp_path / "mlp_digits" / "cut"
    checkpoints = folder / "checkpoints" / "seed0"
    killed = _start(command, checkpoints)
    killed.send_signal(signal.SIGKILL)
    killed.communicate(timeout=60)
    assert killed.returncode == -signal.SIGKILL
    state = saved(folder)
    assert state["status"] == "running"  # as written at its last checkpoint
    epochs_killed = len(state["runs"][0]["history"]["manual"]["loss"])
    assert 2 <= epochs_killed < 100
    assert common.run(mlp_digits.main, command[3:]) == 2
    assert "pass --resume to continue it" in one_line(capsys.readouterr().err)

    interrupted = _start(command + ["--resume"], checkpoints, after=epochs_killed)
    interrupted.send_signal(signal.SIGINT)
    _, err = interrupted.communicate(timeout=60)
    assert interrupted.returncode == 130, err
    line = one_line(err.split("\n", 1)[1])  # after "resumed from ..."
    assert err.startswith(f"resumed from {checkpoints}")
    assert line.startswith("mlp_digits: interrupted (Ctrl-C) during MLP seed 0")
    state = saved(folder)
    assert state["status"] == "interrupted"
    assert len(state["runs"][0]["history"]["manual"]["loss"]) > epochs_killed

    resume = shlex.split(line.split("to resume: ")[1])
    assert resume[:3] == ["python", "-m", "experiments.mlp_digits"] and resume[-1] == "--resume"
    finish = subprocess.run([sys.executable, *resume[1:]], cwd=ROOT, capture_output=True,
                            text=True, timeout=300)
    assert finish.returncode == 0, finish.stderr
    whole = mlp_digits.main([*command[3:5], "--out", "whole", *command[7:]])
    assert comparable(saved(folder)) == comparable(saved(whole["folder"]))
