"""The experiments' command line as a user meets it: a mistake is one line and exit status
2, never a traceback; --help gives every flag a help text, one default and the files a
run writes; --sizes and --layers build the network they describe."""

import argparse
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from experiments import (
    cifar10,
    cnn_images,
    common,
    cost_of_manual_backprop,
    device_check,
    distributed_train,
    init_symmetry,
    mlp_digits,
    notes_network,
    single_neuron,
    tour,
    vanishing_gradients,
)
from jaxnn import checkpoint

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = [cifar10, cnn_images, cost_of_manual_backprop, device_check, distributed_train,
           init_symmetry, mlp_digits, notes_network, single_neuron, tour, vanishing_gradients]


def error_line(capsys) -> str:
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert len(lines) == 1, captured.err
    assert "Traceback" not in captured.err
    return lines[0]


def test_a_missing_data_folder_is_one_line_and_status_2_from_the_shell(tmp_path):
    done = subprocess.run([sys.executable, "-m", "experiments.mlp_digits", "--data",
                           "/nonexistent", "--runs-dir", str(tmp_path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip() == ("python -m experiments.mlp_digits: error: --data "
                                   "/nonexistent: MNIST folder not found: /nonexistent")
    assert not (tmp_path / "mlp_digits").exists()  # nothing written for a refused run


@pytest.mark.parametrize("module, argv, expected", [
    (mlp_digits, ["--data", "EMPTY"], "no MNIST images file in"),
    (mlp_digits, ["--out", "../x"], "--out: run name must be letters"),
    (mlp_digits, ["--epoch", "2"], "unrecognized arguments: --epoch 2"),
    (mlp_digits, ["--epochs", "0"], "argument --epochs: expected an integer >= 1, got '0'"),
    (mlp_digits, ["--alpha", "inf"], "expected a finite number > 0, got 'inf'"),
    (mlp_digits, ["--sizes", "64,12"], "--sizes must start with the 64 inputs of digits 8x8"),
    (mlp_digits, ["--sizes", "64,,10"], "--sizes must be two or more integers"),
    (mlp_digits, ["--resume"], "--resume needs --out NAME"),
    (mlp_digits, ["--resume", "--out", "nothing"], "--resume: there is no run"),
    (cnn_images, ["--layers", "conv:8"], "wrong number of fields ('conv')"),
    (cnn_images, ["--layers", "conv:8:3,pool:2,conv:8:5"], "larger than the padded image"),
    (cnn_images, ["--layers", "dense:8,conv:8:3"], "a feature layer after a dense layer"),
    (cnn_images, ["--layers", "conv:8:3:1:wide"], "a padding other than valid, same"),
    (cifar10, [], "--data PATH is needed"),
    (cifar10, ["--data", "EMPTY"], "pickle file not found"),
    (single_neuron, ["--a0", "0", "--b0", "-1"], "the neuron is dead from the start"),
    (vanishing_gradients, ["--depth", "1"], "expected an integer >= 2, got '1'"),
    (distributed_train, ["--hidden-sizes", "64,x"], "--hidden-sizes must be integers"),
])
def test_user_errors_are_one_line_with_status_2(tmp_path, capsys, module, argv, expected):
    (tmp_path / "EMPTY").mkdir()
    argv = [str(tmp_path / a) if a == "EMPTY" else a for a in argv]
    assert common.run(module.main, ["--runs-dir", str(tmp_path / "runs"), "--smoke",
                                    "--no-progress", *argv]) == 2
    line = error_line(capsys)
    assert line.startswith(f"python -m {module.__name__}: error: ")
    assert expected in line


def test_an_existing_run_folder_says_what_to_pass(tmp_path, capsys):
    argv = ["--runs-dir", str(tmp_path), "--smoke", "--no-progress", "--out", "x"]
    assert common.run(single_neuron.main, argv) == 0
    capsys.readouterr()
    assert common.run(single_neuron.main, argv) == 2
    assert "exists; choose another --out, or pass --overwrite" in error_line(capsys)


def capture_parser(monkeypatch, module) -> argparse.ArgumentParser:
    """The parser a script's main builds, caught when --help ends it."""
    made = []
    real = common.parser

    def parser(*args, **kwargs):
        made.append(real(*args, **kwargs))
        return made[-1]

    monkeypatch.setattr(common, "parser", parser)
    with pytest.raises(SystemExit) as done:
        module.main(["--help"])
    assert done.value.code == 0
    return made[0]


@pytest.mark.parametrize("module", SCRIPTS, ids=lambda m: m.__name__.split(".")[1])
def test_help_gives_every_flag_a_text_one_default_and_the_files_written(monkeypatch, capsys,
                                                                        module):
    p = capture_parser(monkeypatch, module)
    text = capsys.readouterr().out
    assert f"Writes runs/{module.__name__.split('.')[1]}/" in " ".join(text.split())
    assert "results.json" in text and "(default: None)" not in text
    formatter = common.HelpFormatter("prog")
    for action in p._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        shown = formatter._get_help_string(action) % {"default": action.default}
        assert action.help, f"{action.option_strings} has no help"
        assert shown.count("(default") <= 1, shown
        if action.default not in (None, False) and action.nargs != 0:
            assert shown.count("(default") == 1, shown
    assert not p.allow_abbrev


def test_negated_switches_name_the_spelling_in_effect():
    p = common.parser("demo", "A demo.")
    p.add_argument("--conv-methods", action=argparse.BooleanOptionalAction, default=True,
                   help="compare the convolution methods")
    p.add_argument("--shifts", action=argparse.BooleanOptionalAction, default=False,
                   help="shift")
    text = " ".join(p.format_help().split())
    assert "compare the convolution methods (default: --conv-methods)" in text
    assert "shift (default: --no-shifts)" in text
    assert "(default: True)" not in text and "(default: False)" not in text
    with pytest.raises(SystemExit):
        p.parse_args(["--conv"])  # no abbreviations


def test_sizes_build_the_network_they_name(tmp_path):
    result = mlp_digits.main(["--runs-dir", str(tmp_path), "--smoke", "--no-progress",
                              "--sizes", "64,16,8,10", "--seeds", "1", "--source", "manual"])
    assert result["summary"]["sizes"] == [64, 16, 8, 10]
    _, newest = checkpoint.list_checkpoints(Path(result["folder"]) / "checkpoints" / "seed0")[-1]
    shapes = {leaf["path"]: leaf["shape"] for leaf in checkpoint.read_metadata(newest)["leaves"]}
    assert [shapes[f"['manual'][{l}]['W']"] for l in range(3)] == [[16, 64], [8, 16], [10, 8]]
    assert mlp_digits.parse_sizes("784,300,10") == (784, 300, 10)


def test_layer_specs_parse_to_the_layers_they_name():
    from jaxnn.cnn import Conv, MaxPool

    layers, dense = cnn_images.parse_layers("conv:8:3,pool:2,conv:16:3:2:same,pool:2:1,dense:32")
    assert layers == (Conv(8, 3), MaxPool(2), Conv(16, 3, 2, "SAME"), MaxPool(2, 1))
    assert dense == (32,)
    assert cnn_images.parse_layers("conv:4:5:1:2") == ((Conv(4, 5, 1, 2),), ())
    net = cnn_images.network("digits", "im2col", "conv:8:3,pool:2,dense:32")
    # 8x8 -> conv 3x3 valid 6x6x8 -> pool 3x3x8 = 72 -> 32 -> 10
    assert net.sizes == (72, 32, 10)
    params = net.init(jax.random.key(0))
    assert sum(np.size(x) for x in jax.tree.leaves(params)) == (
        3 * 3 * 8 + 8 + 72 * 32 + 32 + 32 * 10 + 10)
