"""The benchmark runs end to end, counts FLOPs by its rule, and every step compiles once.

No timing is asserted: the benchmark reports its targets, it does not enforce them.
"""

import dataclasses
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import benchmark
from jaxnn import DenseNetwork, sgd


def test_smoke_writes_json(tmp_path):
    out = benchmark.main(["--smoke", "--workloads", "mlp_small,cnn_small", "--runs-dir",
                          str(tmp_path), "--out", "smoke", "--no-progress"])
    saved = json.loads((Path(out["folder"]) / "results.json").read_text())
    assert saved["environment"]["jax"] == jax.__version__
    assert set(saved["workloads"]) == {"mlp_small", "cnn_small"}
    for r in saved["workloads"].values():
        assert {"manual", "autodiff"} <= set(r["median_seconds"])
        assert r["manual_over_autodiff"] > 0 and r["flops"]["total"] > 0
        assert r["compile_seconds"]["manual"] > 0
    assert {"scan", "scan autodiff", "loop", "scan floor", "shuffle"} == set(
        saved["workloads"]["mlp_small"]["per_step_seconds"])
    methods = saved["workloads"]["cnn_small"]["conv_methods_seconds_per_step"]
    assert {f"{m} {s} {k}" for m in ("im2col", "lax") for s in ("manual", "autodiff")
            for k in ("step", "scan")} == set(methods)
    assert saved["gemm_ceiling"]["gflops"] > 0
    memory = saved["memory"]
    for key in ("skip", "no_skip"):
        m = memory[key]
        # XLA's buffers hold at least the parameters and the data it trains on
        assert m["xla_bytes"] >= memory["params_bytes"] + memory["data_bytes"] // 2
        assert m["train_peak_rss"] > 0 and m["ratio_rss"] > 0
    assert {t["target"].split(":")[0] for t in saved["targets"]} >= {"mlp_small", "cnn_small"}
    # the ceiling is measured again after every workload, and the plot is written
    around = saved["gemm_ceiling"]["around_workloads"]
    assert len(around) == 3 and min(around) > 0
    assert saved["gemm_ceiling"]["best"] == max(around)
    for r in saved["workloads"].values():
        assert r["ceiling_around"]["before"] in around and r["ceiling_around"]["after"] in around
    noisy = set(saved["noisy_workloads"])
    verdicts = saved["tables"]["targets (reported, not asserted)"]
    assert {v["met"] for v in verdicts} <= {"yes", "NO", "noisy"}
    for v, t in zip(verdicts, saved["targets"], strict=True):
        assert v["met"] == ("yes" if t["met"] else "noisy" if t["workload"] in noisy else "NO")
    assert (Path(out["folder"]) / "ratios.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")


def test_flop_rule():
    """2·m·n_in·n_out per GEMM: forward 1, backward 2, no input gradient for layer 1."""
    w = benchmark.workload("mlp_mnist")
    layers = [784 * 512, 512 * 512, 512 * 10]
    m = 128
    assert benchmark.step_flops(w) == {
        "forward": 2 * m * sum(layers), "backward": 2 * m * (2 * sum(layers) - layers[0]),
        "total": 2 * m * (3 * sum(layers) - layers[0])}
    cnn = benchmark.workload("cnn_small")
    conv1, conv2 = 26 * 26 * 32 * 9, 11 * 11 * 64 * 9 * 32
    dense = 5 * 5 * 64 * 10
    assert benchmark.step_flops(cnn)["total"] == 2 * 64 * (3 * (conv1 + conv2 + dense) - conv1)


def test_numpy_step_matches_manual_step():
    model, params, X, Y = benchmark.build(benchmark.workload("mlp_small"), np.float32, 0)
    step = benchmark.numpy_step(params, X, Y, 0.1)
    loss = step()
    new_params, _, jax_loss = sgd.make_step(model, "manual")(params, (), X, Y, jnp.float32(0.1))
    assert abs(loss - float(jax_loss)) < 1e-5
    again = benchmark.numpy_step(new_params, X, Y, 0.1)()
    assert abs(step() - again) < 1e-5  # the numpy update equals the jax update


@dataclasses.dataclass(frozen=True)
class CountingNetwork(DenseNetwork):
    """A DenseNetwork that counts how often its gradients are traced (Python runs only then)."""

    def loss(self, params, X, Y):
        TRACES["autodiff"] += 1
        return super().loss(params, X, Y)

    def manual_grad(self, params, X, Y):
        TRACES["manual"] += 1
        return super().manual_grad(params, X, Y)

    def manual_descent(self, params, X, Y, alpha, allow=None):
        TRACES["manual"] += 1  # the manual step's form with the explicit update
        return super().manual_descent(params, X, Y, alpha, allow)


TRACES = {"manual": 0, "autodiff": 0}


@pytest.mark.parametrize("source", ["manual", "autodiff"])
def test_each_step_traced_once_over_three_epochs(source):
    net = CountingNetwork((64, 32, 10), "relu", "softmax", "softmax")
    params = net.init(jax.random.key(0), dtype=jnp.float32)
    X = jax.random.normal(jax.random.key(1), (96, 64), jnp.float32)
    Y = jax.random.randint(jax.random.key(2), (96,), 0, 10)
    before, cache = dict(TRACES), sgd.epoch_donating._cache_size()
    sgd.train(net, params, X, Y, key=jax.random.key(3), alpha=0.1, epochs=3, batch_size=32,
              source=source)
    assert TRACES[source] - before[source] == 1
    assert sgd.epoch_donating._cache_size() - cache == 1

    step = sgd.make_step(net, source)
    before = TRACES[source]
    state = (params, ())
    for _ in range(3):
        *state, _ = step(*state, X[:32], Y[:32], jnp.float32(0.1))
    assert TRACES[source] - before == 1 and step._cache_size() == 1


def test_peers_without_torch_exits_nonzero(monkeypatch, tmp_path):
    monkeypatch.setattr(benchmark, "torch_available", lambda: False)
    with pytest.raises(SystemExit) as exit_info:
        benchmark.main(["--peers", "--smoke", "--runs-dir", str(tmp_path)])
    assert exit_info.value.code != 0


def test_a_fallen_ceiling_marks_its_workloads_noisy_instead_of_no():
    ceilings = {"mlp_small": {"before": 207.0, "after": 190.0},
                "mlp_mnist": {"before": 190.0, "after": 54.0},  # load came during it
                "mlp_wide": {"before": 54.0, "after": 150.0}}
    noisy = benchmark.noisy_workloads(ceilings, 207.0, 0.7)
    assert noisy == {"mlp_mnist", "mlp_wide"}
    assert benchmark.noisy_workloads(ceilings, 207.0, 0.2) == set()
    goals = [{"target": "mlp_small: a", "value": 2.0, "met": False, "workload": "mlp_small",
              "timing": True},
             {"target": "mlp_mnist: b", "value": 2.0, "met": False, "workload": "mlp_mnist",
              "timing": True},
             {"target": "mlp_mnist: c", "value": 0.5, "met": True, "workload": "mlp_mnist",
              "timing": True},
             {"target": "mlp_wide: memory", "value": 2.0, "met": False, "workload": "mlp_wide",
              "timing": False}]
    assert [v["met"] for v in benchmark.verdicts(goals, noisy)] == ["NO", "noisy", "yes", "NO"]


def test_durations_read_in_s_ms_us():
    assert benchmark.duration(28.0594700e-3) == "28.1 ms"
    assert benchmark.duration(28.0594700) == "28.1 s"
    assert benchmark.duration(2.8e-5) == "28.0 µs"
    assert benchmark.duration(0.99996) == "1.00 s"
    assert benchmark.duration(0.0) == "0 s" and benchmark.duration(None) == ""


def test_ratio_panels_hold_the_measured_ratios():
    results = {"mlp_small": {"manual_over_autodiff": 0.9, "scan_manual_over_autodiff": 1.1,
                             "loop_over_scan": 2.0, "numpy_best_seconds": 3e-4,
                             "median_seconds": {"manual": 1e-4}},
               "mlp_wide": {"manual_over_autodiff": 1.01, "median_seconds": {"manual": 0.3}}}
    panels = {title: series for title, _, series, _ in benchmark.ratio_panels(results)}
    assert panels["manual vs autodiff"] == {
        "manual/autodiff step": {"mlp_small": 0.9, "mlp_wide": 1.01},
        "manual/autodiff scan": {"mlp_small": 1.1}}
    assert panels["scanned epoch vs Python loop"] == {"loop/scan (per step)": {"mlp_small": 2.0}}
    assert panels["peers vs the manual step"]["numpy/manual step"]["mlp_small"] == (
        pytest.approx(3.0))
    del results["mlp_small"]["numpy_best_seconds"]
    assert "peers vs the manual step" not in {t for t, *_ in benchmark.ratio_panels(results)}
