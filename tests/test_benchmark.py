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
