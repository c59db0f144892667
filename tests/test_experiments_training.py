"""The training experiments run end to end (--smoke), write valid results and PNGs, and never
overwrite a run; the single neuron's hand-written gradient equals jax.grad."""

import gzip
import importlib
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import cifar10, cnn_images, common, mlp_digits, notes_network, single_neuron, tour

from .helpers import PNG_SIGNATURE, check_run, smoke, write_cifar_batches


@pytest.fixture(scope="module")
def smoke_runs(tmp_path_factory):
    """One --smoke run of each training experiment, shared by the tests below."""
    runs_dir = tmp_path_factory.mktemp("runs")
    modules = {"single_neuron": (single_neuron, []), "mlp_digits": (mlp_digits, ["--seeds", "2"]),
               "cnn_images": (cnn_images, ["--seeds", "1", "--source", "both"])}
    return {name: module.main(smoke(runs_dir, *extra))
            for name, (module, extra) in modules.items()}


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
    assert saved["status"] == "complete" and saved["complete"] is True
    assert [r["seed"] for r in saved["runs"]] == summary["seeds"] == [0, 1]
    for source in ("manual", "autodiff"):
        per_seed = [r["history"][source]["test_accuracy"][-1] for r in saved["runs"]]
        assert summary[f"test_accuracy_{source}_seeds"] == per_seed
        assert summary[f"test_accuracy_{source}"] == pytest.approx(np.mean(per_seed))
        assert summary[f"test_accuracy_{source}_range"] == [min(per_seed), max(per_seed)]
    assert summary["max_abs_difference"] < 1e-4
    for r in saved["runs"]:
        assert len(r["trajectory_difference"]) == saved["config"]["epochs"]
        assert len(r["history"]["manual"]["test_accuracy"]) == saved["config"]["epochs"]
    # the two seeds split the digits differently (each its own stratified 80/20 split)
    assert saved["runs"][0]["history"]["manual"]["loss"] != saved["runs"][1]["history"][
        "manual"]["loss"]


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
                                   "--source", "autodiff", "--batch-size", "16", "--seeds", "1"))
    summary = result["summary"]
    assert summary["sizes"] == [784, 16, 10]
    assert (summary["m_train"], summary["m_test"]) == (64, 32)
    assert "test_accuracy_manual" not in summary


def test_cnn_images_smoke(smoke_runs):
    result = smoke_runs["cnn_images"]
    saved = check_run(result, "cnn_images", pngs=5)
    summary = result["summary"]
    assert 0.0 <= summary["digits_test_accuracy"] <= 1.0
    assert summary["patches_baseline"] == pytest.approx(0.5)
    # --shifts: the 256 smoke digits and their 4 one-pixel shifts
    assert summary["digits_m_train"] == 5 * 256
    assert summary["digits_max_abs_difference"] < 1e-4
    history = saved["tasks"]["digits"]["seeds"][0]["history"]
    assert set(history) == {"manual", "autodiff"}


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
    assert ("single_neuron", "a ($ per sqft; true 200)") in quantities
    rows = {(r["experiment"], r["quantity"]): r["value"] for r in result["summary"]["rows"]}
    assert rows[("single_neuron", "a ($ per sqft; true 200)")] == pytest.approx(
        1000 * smoke_runs["single_neuron"]["summary"]["a"])
    assert ("notes_network", "max manual/autodiff rel. error (float32)") in quantities
    out = capsys.readouterr().out
    assert "Tour finished" in out and smoke_runs["mlp_digits"]["folder"] in out


def test_mlp_digits_checkpoints_and_resume(tmp_path):
    args = smoke(tmp_path, "--out", "r", "--checkpoint-every", "1", "--source", "manual",
                 "--seeds", "1")
    first = mlp_digits.main(args)
    folder = Path(first["folder"])
    assert sorted(p.name for p in (folder / "checkpoints" / "seed0").glob("*.npz"))
    with pytest.raises(SystemExit):
        mlp_digits.main(args)  # the folder exists: no silent overwrite
    again = mlp_digits.main(args + ["--resume"])
    assert again["folder"] == first["folder"]
    assert again["summary"]["test_accuracy_manual"] == first["summary"]["test_accuracy_manual"]


def capture_figures(monkeypatch) -> list:
    """Figures the experiments save, kept open for inspection instead of written."""
    figures = []
    monkeypatch.setattr(common, "save_figure", lambda fig, folder, name: figures.append(fig))
    return figures


def test_mlp_loss_plot_draws_exact_zeros_honestly(tmp_path, monkeypatch):
    figures = capture_figures(monkeypatch)
    records = {s: {"loss": [1.0, 0.5], "test_accuracy": [0.9, 0.95]}
               for s in ("manual", "autodiff")}
    zero = {"max_abs": 0.0, "max_rel": 0.0}
    mlp_digits.plot(tmp_path, records, [zero, zero], "t")
    ax = figures[-1].axes[2]
    assert ax.get_yscale() == "linear"
    assert any("identical" in t.get_text() for t in ax.texts)
    mlp_digits.plot(tmp_path, records, [zero, {"max_abs": 1e-7, "max_rel": 2e-8}], "t")
    ax = figures[-1].axes[2]
    assert ax.get_yscale() == "log"
    low, _ = ax.get_ylim()
    assert low > 1e-12  # the zero is drawn a decade below the smallest difference, not at 1e-300
    assert any("exactly 0" in t.get_text() for t in ax.get_legend().get_texts())
    assert figures[-1].get_layout_engine() is not None  # constrained: no overlapping labels


def test_single_neuron_plot_keeps_dollar_signs_and_says_when_every_step_is_on_a_kink(
        tmp_path, monkeypatch):
    assert single_neuron.fd_cell({"fd_vs_autodiff": float("nan"), "kinks": 2}) == (
        "none: a and b both on a kink")
    assert single_neuron.fd_cell({"fd_vs_autodiff": 1e-6, "kinks": 1}) == 1e-6
    figures = capture_figures(monkeypatch)
    single_neuron.main(smoke(tmp_path))
    fig = figures[-1]
    fig.canvas.draw()
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert any("\\$/sqft" in t for t in legend)  # escaped: mathtext shows a dollar sign
    assert "\\$" in fig.axes[0].get_ylabel()


def test_cnn_feature_maps_say_how_many_are_shown_with_colour_bars(tmp_path, monkeypatch):
    figures = capture_figures(monkeypatch)
    result = cnn_images.main(smoke(tmp_path, "--task", "digits", "--seeds", "1",
                                   "--layers", "conv:12:3,pool:2,dense:8"))
    titles = [fig._suptitle.get_text() for fig in figures if fig._suptitle is not None]
    maps = next(t for t in titles if "feature maps" in t)
    assert "maps 0-11 shown, 12 of 12" not in maps and "all 12 maps" in maps
    feature = next(fig for fig in figures if fig._suptitle is not None
                   and "feature maps" in fig._suptitle.get_text())
    images = [ax for ax in feature.axes if ax.images]
    bars = [ax for ax in feature.axes if not ax.images]
    assert len(images) == 1 + 12 and len(bars) == 12  # the input, each map and its colour bar
    assert result["summary"]["digits_parameters"] == 3 * 3 * 12 + 12 + 108 * 8 + 8 + 8 * 10 + 10


@pytest.mark.parametrize("binary", [False, True])
def test_cifar10_runs_on_generated_batches(tmp_path, binary):
    folder = "cifar-10-batches-bin" if binary else "cifar-10-batches-py"
    data = write_cifar_batches(tmp_path / "data" / folder, per_batch=24, binary=binary)
    result = cifar10.main(["--runs-dir", str(tmp_path / "runs"), "--no-progress", "--data",
                           str(data.parent), "--epochs", "4", "--batch-size", "8",
                           "--source", "both", "--layers", "conv:6:3,pool:4,dense:16",
                           "--alpha", "0.05"])
    folder = Path(result["folder"])
    saved = json.loads((folder / "results.json").read_text())
    assert saved["status"] == "complete"
    assert (folder / "training.png").read_bytes()[:8] == PNG_SIGNATURE
    summary = result["summary"]
    assert (summary["m_train"], summary["m_test"]) == (5 * 24, 24)
    assert summary["manual_vs_autodiff"] < 1e-4
    assert len(saved["history"]["manual"]["loss"]) == 4
    # each class has its own colour: after 4 epochs well above guessing (10%)
    assert summary["test_accuracy"] >= 0.25


def test_notes_network_says_when_a_leaf_has_no_smooth_coordinate(tmp_path):
    result = notes_network.main(smoke(tmp_path))
    saved = check_run(result, "notes_network")
    for row in saved["gradient_check"]:
        kinks, checked = (int(n) for n in row["kinks"].split(" of "))
        assert 0 <= kinks <= checked
        assert (row["fd/autodiff"] == "none: all on a kink") == (kinks == checked)
    assert result["summary"]["float32"]["max_manual_vs_autodiff"] < 1e-4
