"""The training experiments run end to end (--smoke), write valid results and PNGs, and never
overwrite a run; the single neuron's hand-written gradient equals jax.grad."""

import gzip
import importlib
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import cnn_images, mlp_digits, single_neuron, tour

from .helpers import check_run, smoke


@pytest.fixture(scope="module")
def smoke_runs(tmp_path_factory):
    """One --smoke run of each training experiment, shared by the tests below."""
    runs_dir = tmp_path_factory.mktemp("runs")
    modules = {"single_neuron": single_neuron, "mlp_digits": mlp_digits,
               "cnn_images": cnn_images}
    return {name: module.main(smoke(runs_dir)) for name, module in modules.items()}


def test_single_neuron_smoke(smoke_runs):
    result = smoke_runs["single_neuron"]
    saved = check_run(result, "single_neuron")
    summary = result["summary"]
    assert set(saved["history"]["loss"]) == {"manual", "autodiff"}
    assert len(saved["history"]["loss"]["manual"]) == saved["config"]["epochs"]
    assert summary["max_manual_vs_autodiff"] < 1e-5
    assert summary["trajectory_difference"]["max_abs"] < 1e-5
    assert np.isfinite([summary["a"], summary["b"], summary["final_loss"]]).all()


def test_single_neuron_refuses_to_overwrite(tmp_path):
    args = smoke(tmp_path, "--out", "same", "--source", "manual")
    first = single_neuron.main(args)
    with pytest.raises(SystemExit, match="exists"):
        single_neuron.main(args)
    second = single_neuron.main(args + ["--overwrite"])
    assert first["folder"] == second["folder"]


def test_single_neuron_refuses_a_dead_start(tmp_path):
    with pytest.raises(SystemExit, match="dead"):
        single_neuron.main(smoke(tmp_path, "--a0", "0", "--b0", "-1"))


def test_single_neuron_manual_gradient_equals_jax_grad():
    kx, ky, kp = jax.random.split(jax.random.key(4), 3)
    x = jax.random.normal(kx, (50,), jnp.float64)
    y = jax.nn.relu(0.7 * x + 0.2) + 0.1 * jax.random.normal(ky, (50,), jnp.float64)
    a, b = jax.random.normal(kp, (2,), jnp.float64)
    params = {"a": a, "b": b}
    z = a * x + b
    assert bool(jnp.any(z > 0)) and bool(jnp.any(z < 0))
    value, manual = single_neuron.manual_grad(params, x, y)
    auto_value, autodiff = jax.value_and_grad(single_neuron.loss)(params, x, y)
    assert manual["a"].dtype == jnp.float64
    np.testing.assert_allclose(value, auto_value, rtol=1e-15)
    for name in ("a", "b"):
        np.testing.assert_allclose(manual[name], autodiff[name], rtol=1e-13, atol=1e-16)
    dead = {"a": jnp.float64(-1.0), "b": jnp.float64(-10.0)}
    _, grads = single_neuron.manual_grad(dead, x, y)
    assert float(grads["a"]) == float(grads["b"]) == 0.0


def test_mlp_digits_smoke(smoke_runs):
    result = smoke_runs["mlp_digits"]
    saved = check_run(result, "mlp_digits")
    summary = result["summary"]
    assert summary["sizes"] == [64, 128, 10]
    assert 0.0 <= summary["test_accuracy_manual"] <= 1.0
    assert summary["max_abs_difference"] < 1e-4
    assert len(saved["trajectory_difference"]) == saved["config"]["epochs"]


def write_idx(path: Path, array: np.ndarray, type_byte: int) -> None:
    header = bytes([0, 0, type_byte, array.ndim])
    header += b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    path.write_bytes(gzip.compress(header + array.astype(">u1").tobytes()))


def test_mlp_digits_reads_mnist_idx_files(tmp_path):
    rng = np.random.default_rng(0)
    mnist = tmp_path / "mnist"
    mnist.mkdir()
    for prefix, m in (("train", 64), ("t10k", 32)):
        write_idx(mnist / f"{prefix}-images-idx3-ubyte.gz",
                  rng.integers(0, 256, (m, 28, 28), dtype=np.uint8), 0x08)
        write_idx(mnist / f"{prefix}-labels-idx1-ubyte.gz",
                  rng.integers(0, 10, m, dtype=np.uint8), 0x08)
    result = mlp_digits.main(smoke(tmp_path / "runs", "--data", str(mnist), "--hidden", "16",
                                   "--source", "autodiff", "--batch-size", "16"))
    summary = result["summary"]
    assert summary["sizes"] == [784, 16, 10]
    assert (summary["m_train"], summary["m_test"]) == (64, 32)
    assert "test_accuracy_manual" not in summary


def test_cnn_images_smoke(smoke_runs):
    result = smoke_runs["cnn_images"]
    check_run(result, "cnn_images", pngs=3)
    summary = result["summary"]
    assert 0.0 <= summary["digits_test_accuracy"] <= 1.0
    assert summary["patches_baseline"] == pytest.approx(0.5)


def test_tour_runs_every_experiment_and_tabulates(tmp_path, smoke_runs, monkeypatch, capsys):
    """The tour's wiring, with the experiments' real smoke results (each is run end to end
    above); notes_network, tested with its own experiment, answers with a summary of its
    documented shape."""
    calls = {}
    notes = {"folder": str(tmp_path / "notes"), "summary": {"float32": {
        "max_manual_vs_autodiff": 1e-6, "max_fd_vs_autodiff": 1e-4}}}
    answers = {"notes_network": notes, **smoke_runs}
    for name, answer in answers.items():
        module = importlib.import_module(f"experiments.{name}")

        def fake_main(argv, name=name, answer=answer):
            calls[name] = argv
            return answer

        monkeypatch.setattr(module, "main", fake_main)
    result = tour.main(smoke(tmp_path, "--seed", "3"))
    check_run(result, "tour", pngs=0)
    assert set(calls) == set(answers)
    for argv in calls.values():
        assert {"--smoke", "--no-progress"} <= set(argv)
        assert argv[argv.index("--runs-dir") + 1] == str(tmp_path)
        assert argv[argv.index("--seed") + 1] == "3"
    quantities = {(row["experiment"], row["quantity"]) for row in result["summary"]["rows"]}
    assert ("mlp_digits", "test accuracy (manual gradient)") in quantities
    assert ("single_neuron", "b (thousand $; true -160)") in quantities
    assert ("notes_network", "max manual/autodiff rel. error (float32)") in quantities
    out = capsys.readouterr().out
    assert "Tour finished" in out and smoke_runs["mlp_digits"]["folder"] in out


def test_mlp_digits_checkpoints_and_resume(tmp_path):
    args = smoke(tmp_path, "--out", "r", "--checkpoint-every", "1", "--source", "manual")
    first = mlp_digits.main(args)
    folder = Path(first["folder"])
    assert sorted(p.name for p in (folder / "checkpoints" / "manual").glob("*.npz"))
    with pytest.raises(SystemExit):
        mlp_digits.main(args)  # the folder exists: no silent overwrite
    again = mlp_digits.main(args + ["--resume"])
    assert again["folder"] == first["folder"]
    assert again["summary"]["test_accuracy_manual"] == first["summary"]["test_accuracy_manual"]
