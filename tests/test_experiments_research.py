"""The research experiments run end to end (--smoke), write valid results and PNGs, and their
cheap claims hold: identical initial units stay identical, loop == vmap == matrix, the
δ recursion's per-example deltas average to jax.grad, DP-SGD's clipping bounds each norm."""


import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import (
    common,
    cost_of_manual_backprop,
    gradcheck_matrix,
    init_symmetry,
    per_example_gradients,
    vanishing_gradients,
    vectorization,
)
from jaxnn import DenseNetwork

from .helpers import check_run, smoke


def test_gradcheck_matrix_smoke(tmp_path):
    result = gradcheck_matrix.main(smoke(tmp_path, "--no-cnn"))
    saved = check_run(result, "gradcheck_matrix", pngs=3)
    assert result["failures"] == []
    summary = result["summary"]
    assert summary["float64"]["manual/autodiff"] < 1e-12
    assert summary["float32"]["manual/autodiff"] < 1e-3
    # the best finite-difference step lies within a factor 10 of eps^(1/3)
    for dtype in ("float32", "float64"):
        best = summary["float32_explained"]["fd_best_h"][dtype]
        assert 0.1 < best / summary["float32_explained"]["eps_cube_root"][dtype] < 10
    assert {r["dtype"] for r in saved["rows"]} == {"float32", "float64"}


def test_gradcheck_matrix_flags_combinations_above_tolerance(tmp_path):
    result = gradcheck_matrix.main(smoke(tmp_path, "--no-cnn", "--dtypes", "float64",
                                         "--max-depth", "1", "--tolerance-scale", "1e-30"))
    assert result["failures"], "a tolerance of ~0 must flag the combinations with any error"
    assert all(f["failed"] for f in result["failures"])


def test_init_symmetry_smoke_identical_units_stay_identical(tmp_path):
    result = init_symmetry.main(smoke(tmp_path))
    check_run(result, "init_symmetry", pngs=2)
    sym = result["summary"]["symmetry"]
    for hidden in ("tanh", "sigmoid", "relu"):
        assert sym[f"{hidden}/zeros"]["identical_units_throughout"]
        assert sym[f"{hidden}/constant"]["identical_units_throughout"]
        assert not sym[f"{hidden}/normal"]["identical_units_throughout"]
    # all-zero tanh and ReLU networks never move their hidden weights; sigmoid ones do
    assert sym["tanh/zeros"]["hidden_W_norm_final"] == [0.0, 0.0]
    assert sym["relu/zeros"]["hidden_W_norm_final"] == [0.0, 0.0]
    assert min(sym["sigmoid/zeros"]["hidden_W_norm_final"]) > 0


def test_unit_spread_is_zero_exactly_for_equal_rows():
    W = jnp.tile(jnp.arange(3.0)[None], (4, 1))
    params = [{"W": W, "b": jnp.zeros(4)}, {"W": jnp.ones((2, 4)), "b": jnp.zeros(2)}]
    assert init_symmetry.unit_spread(params) == [0.0]
    params[0]["b"] = params[0]["b"].at[1].set(0.5)
    assert init_symmetry.unit_spread(params) == [0.5]


def test_vanishing_gradients_smoke(tmp_path):
    result = vanishing_gradients.main(smoke(tmp_path))
    check_run(result, "vanishing_gradients", pngs=2)
    s = result["summary"]
    assert s["sigmoid"]["ratio_first_to_last_at_init"] < s["relu"]["ratio_first_to_last_at_init"]


def test_per_example_deltas_average_to_the_autodiff_bias_gradient():
    net = DenseNetwork((5, 4, 4, 3), "tanh", "softmax", "softmax")
    params = net.init(jax.random.key(0), "xavier_normal", jnp.float64)
    X = jax.random.normal(jax.random.key(1), (7, 5), jnp.float64)
    Y = jnp.arange(7) % 3
    deltas, acts = jax.jit(vanishing_gradients.per_example_deltas, static_argnums=0)(
        net, params, X, Y)
    grads = jax.jit(jax.grad(net.loss))(params, X, Y)
    for l, delta in enumerate(deltas):
        np.testing.assert_allclose(jnp.mean(delta, axis=0), grads[l]["b"], rtol=1e-12,
                                   atol=1e-15)
    assert [a.shape for a in acts] == [(7, 4), (7, 4), (7, 3)]


def test_vectorization_smoke_and_loop_equals_vmap_equals_matrix(tmp_path):
    result = vectorization.main(smoke(tmp_path))
    check_run(result, "vectorization")
    assert result["summary"]["max_rel_difference"] <= 1e-5

    net = DenseNetwork((6, 5, 3), "sigmoid", "softmax", "softmax")
    params = net.init(jax.random.key(0), "he", jnp.float64)
    X = jax.random.normal(jax.random.key(1), (4, 6), jnp.float64)
    Y = jnp.array([0, 2, 1, 2])
    forward = {k: fn() for k, (fn, _) in vectorization.forward_fns(
        params, X, "sigmoid", "softmax").items()}
    forward["matrix"] = forward["matrix"].T
    assert vectorization.largest_difference(forward) < 1e-14
    backward = {k: fn() for k, (fn, _) in vectorization.backward_fns(
        params, X, Y, "sigmoid", "softmax", "softmax").items()}
    assert vectorization.largest_difference(backward) < 1e-14


def test_per_example_gradients_smoke(tmp_path):
    result = per_example_gradients.main(smoke(tmp_path))
    check_run(result, "per_example_gradients")
    s = result["summary"]
    assert s["max_rel_difference"] <= 1e-5
    assert s["mean_vs_grad_difference"] <= 1e-5
    assert set(s["dp_sgd"]) == {"non-private", "clip only (C=5.0)", "DP-SGD (C=5.0, σ=1.0)"}


def test_dp_gradient_clips_each_example_and_reduces_to_the_mean():
    per_example = [{"W": jnp.array([[[3.0, 4.0]], [[0.3, 0.4]]]), "b": jnp.zeros((2, 1))}]
    key = jax.random.key(0)
    mean, _ = per_example_gradients.dp_gradient(per_example, key, jnp.inf, 0.0)
    np.testing.assert_allclose(mean[0]["W"], [[1.65, 2.2]])
    clipped, fraction = per_example_gradients.dp_gradient(per_example, key, 1.0, 0.0)
    # example 1 (norm 5) is scaled to norm 1, example 2 (norm 0.5) is kept
    np.testing.assert_allclose(clipped[0]["W"], [[(0.6 + 0.3) / 2, (0.8 + 0.4) / 2]])
    assert float(fraction) == 0.5


def test_cost_of_manual_backprop_smoke(tmp_path):
    result = cost_of_manual_backprop.main(smoke(tmp_path))
    saved = check_run(result, "cost_of_manual_backprop")
    for model in saved["results"].values():
        assert "autodiff" in model and any(name.startswith("manual") for name in model)
        for r in model.values():
            assert r["flops"] > 0 and r["bytes_accessed"] > 0 and r["seconds"] > 0
            assert r["hlo"]["total"] > r["hlo"]["entry"] > 0
    assert any("transcendental" in line for line in saved["explanation"])


class _FakeCompiled:
    def __init__(self, analysis, text=""):
        self.analysis, self.text = analysis, text

    def cost_analysis(self):
        return self.analysis

    def as_text(self):
        return self.text


@pytest.mark.parametrize("analysis", [
    {"flops": 3.0, "bytes accessed": 5.0, "transcendentals": 1.0},
    [{"flops": 1.0, "bytes accessed": 2.0, "transcendentals": 1.0},
     {"flops": 2.0, "bytes accessed": 3.0}],
])
def test_xla_cost_reads_a_dict_or_a_list_of_dicts(analysis):
    cost = common.xla_cost(_FakeCompiled(analysis))
    assert cost["flops"] == 3.0 and cost["bytes_accessed"] == 5.0
    assert cost["transcendentals"] == 1.0


def test_hlo_ops_counts_instructions_by_opcode():
    text = """HloModule m

%fused (p: f32[2]) -> f32[2] {
  %p = f32[2]{0} parameter(0)
  ROOT %e = f32[2]{0} exponential(%p)
}

ENTRY %main (a: f32[2,2], b: f32[2]) -> (f32[2,2], f32[2]) {
  %a = f32[2,2]{1,0} parameter(0)
  %b = f32[2]{0} parameter(1)
  %d = f32[2,2]{1,0} dot(%a, %a), lhs_contracting_dims={1}, rhs_contracting_dims={0}
  %f = f32[2]{0} fusion(%b), kind=kLoop, calls=%fused
  ROOT %t = (f32[2,2]{1,0}, f32[2]{0}) tuple(%d, %f)
}
"""
    ops = common.hlo_ops(text)
    assert ops["total"] == 7 and ops["entry"] == 5
    assert ops["by_opcode"] == {"dot": 1, "exponential": 1, "fusion": 1, "parameter": 3,
                                "tuple": 1}


def test_time_interleaved_returns_a_median_per_function():
    calls = []
    times = common.time_interleaved({"a": lambda: calls.append("a"),
                                     "b": lambda: calls.append("b")}, repeats=3, warmup=1)
    assert set(times) == {"a", "b"} and all(t >= 0 for t in times.values())
    # warm-up, then interleaved repeats starting from a different function each time
    assert calls == ["a", "b", "a", "b", "b", "a", "a", "b"]
