"""The options these experiments add: each has help, its default said once, and the
boolean ones read the right way round; bad values are one-line usage errors."""

import argparse

import pytest

from experiments import benchmark, common, gradcheck_matrix, per_example_gradients, vectorization

SCRIPTS = {"benchmark": benchmark, "gradcheck_matrix": gradcheck_matrix,
           "per_example_gradients": per_example_gradients, "vectorization": vectorization}


def parser_of(module, monkeypatch) -> argparse.ArgumentParser:
    """The parser a script's main builds, caught as it parses."""
    caught = {}

    def stop(self, *args, **kwargs):
        caught["parser"] = self
        raise SystemExit(0)

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", stop)
    with pytest.raises(SystemExit):
        module.main([])
    return caught["parser"]


def own_actions(p: argparse.ArgumentParser) -> list[argparse.Action]:
    shared = {o for a in common.parser("x", None)._actions for o in a.option_strings}
    return [a for a in p._actions if not set(a.option_strings) & shared]


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_every_own_flag_has_help_and_one_default(name, monkeypatch):
    p = parser_of(SCRIPTS[name], monkeypatch)
    actions = own_actions(p)
    assert actions
    formatter = p._get_formatter()
    for action in actions:
        assert action.help and action.help != argparse.SUPPRESS, action.option_strings
        text = formatter._expand_help(action)
        assert text.count("(default:") <= 1, text
    assert p.epilog is None or "Writes" in p.epilog


def test_conv_methods_flag_reads_the_right_way_round(monkeypatch):
    p = parser_of(benchmark, monkeypatch)
    (action,) = [a for a in p._actions if "--no-conv-methods" in a.option_strings]
    assert action.option_strings == ["--conv-methods", "--no-conv-methods"]
    text = p._get_formatter()._expand_help(action)
    assert text.startswith("time the CNNs with each conv_method")
    assert "(default: --conv-methods)" in text
    monkeypatch.undo()
    assert p.parse_args(["--no-conv-methods"]).conv_methods is False
    assert p.parse_args([]).conv_methods is True


@pytest.mark.parametrize("name, argv", [
    ("benchmark", ["--repeats", "0"]), ("benchmark", ["--noisy-below", "1.5"]),
    ("benchmark", ["--workloads", "mlp_huge"]), ("vectorization", ["--batch-sizes", "1,a"]),
    ("vectorization", ["--sizes", "64"])])
def test_bad_values_are_usage_errors(name, argv, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        SCRIPTS[name].main(["--runs-dir", str(tmp_path), *argv])
    assert e.value.code == 2
    assert "Traceback" not in capsys.readouterr().err
    assert not list(tmp_path.iterdir())  # no run folder made for a rejected command
