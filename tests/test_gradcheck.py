import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxnn import gradcheck, sgd

from .helpers import problem


def test_relative_error_definition():
    a = jnp.array([1.0, 0.0, 2.0, 0.0, 1e-30], jnp.float64)
    b = jnp.array([1.1, 0.0, -2.0, 1e-300, 0.0], jnp.float64)
    r = gradcheck.relative_error(a, b)
    np.testing.assert_allclose(r, [0.1 / 1.1, 0.0, 2.0, 1.0, 1.0])
    np.testing.assert_allclose(gradcheck.relative_error(a, b, floor=1.0)[3:], [1e-300, 1e-30])
    with pytest.raises(ValueError, match="cannot compare shapes"):
        gradcheck.relative_error(a, b[:2])


def test_compare_trees_names_and_structure():
    tree = [{"W": jnp.ones((2, 2)), "b": jnp.ones(2)}]
    other = [{"W": jnp.ones((2, 2)).at[0, 0].set(2.0), "b": jnp.ones(2)}]
    errors = gradcheck.compare_trees(tree, other)
    assert errors == {"[0]['W']": 0.5, "[0]['b']": 0.0}
    assert gradcheck.per_layer(errors) == {"[0]": 0.5}
    with pytest.raises(ValueError, match="structure"):
        gradcheck.compare_trees(tree, [tree[0]["W"]])


def test_scaled_difference_ignores_entries_zero_up_to_rounding():
    a = [jnp.array([1.0, 1e-20], jnp.float64)]
    b = [jnp.array([1.0, 2e-20], jnp.float64)]
    assert gradcheck.compare_trees(a, b)["[0]"] == 0.5
    assert gradcheck.compare_trees_scaled(a, b)["[0]"] == 1e-20


def test_a_nan_or_a_zero_reference_is_an_infinite_error():
    # one NaN among 196,704 numbers: XLA's CPU max over so many drops it; the report may not
    good = jnp.ones((96, 2049), jnp.float32)
    bad = good.at[40, 7].set(jnp.nan)
    for a, b in ((good, bad), (bad, good), (bad, bad)):
        assert gradcheck.compare_trees([a], [b]) == {"[0]": float("inf")}
        assert gradcheck.compare_trees_scaled([a], [b]) == {"[0]": float("inf")}
    # a gradient where the reference is all zero is infinitely wrong, the same is right
    assert gradcheck.compare_trees_scaled([good], [0 * good]) == {"[0]": float("inf")}
    assert gradcheck.compare_trees_scaled([0 * good], [0 * good]) == {"[0]": 0.0}


def test_detects_a_wrong_manual_gradient():
    net, params, X, Y = problem("tanh", "softmax", "softmax", 2)

    class Broken(type(net)):
        def manual_grad(self, params, X, Y):
            loss, grads = super().manual_grad(params, X, Y)
            grads[0]["b"] = grads[0]["b"] * 1.001
            return loss, grads

    broken = Broken(net.sizes, net.hidden, net.output, net.loss_name)
    report = gradcheck.check(broken, params, X, Y)
    assert report.manual_vs_autodiff["[0]['b']"] > 9e-4
    assert 9e-4 < report.manual_vs_autodiff_scaled["[0]['b']"] < 1.1e-3
    assert report.manual_vs_autodiff_scaled["[0]['W']"] < 1e-13
    assert report.fd_vs_manual["[0]['b']"] > 9e-4
    assert report.fd_vs_autodiff["[0]['b']"] < 1e-6


def test_random_subset_of_coordinates_after_training():
    net, params, X, Y = problem("relu", "softmax", "cross_entropy", 3, width=12, m=16)
    params, _ = sgd.train(net, params, X, Y, key=jax.random.key(0), alpha=0.1, epochs=5,
                          batch_size=8)
    report = gradcheck.check(net, params, X, Y, max_coords=50, key=jax.random.key(1))
    assert sum(report.checked.values()) == 50
    assert report.max() < 1e-10
    assert report.max("fd_vs_autodiff") < 1e-6
    assert "[1]['W']" in report.table()
