"""Every registered layer kind: shape inference, and its hand-written backward against
jax.vjp of its forward and against central differences (float64), by one call."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxnn import gradcheck, layers
from jaxnn.fast import conv as fast_conv

KINDS = sorted(layers.REGISTRY)


def example(kind, key=0):
    layer, shape = layers.REGISTRY[kind].example()
    out_shape, params = layer.init(jax.random.key(key), shape, dtype=jnp.float64)
    x = jax.random.normal(jax.random.key(key + 1), shape, jnp.float64)
    return layer, out_shape, params, x


def test_the_notes_kinds_are_registered():
    assert {"dense", "activation", "conv", "max_pool", "avg_pool", "flatten",
            "residual"} <= set(KINDS)


@pytest.mark.parametrize("kind", KINDS)
def test_init_infers_the_forward_shape(kind):
    layer, out_shape, params, x = example(kind)
    a, _ = layer.forward(params, x)
    assert a.shape == out_shape
    assert a.dtype == jnp.float64
    assert all(leaf.dtype == jnp.float64 for leaf in jax.tree.leaves(params))


@pytest.mark.parametrize("kind", KINDS)
def test_backward_matches_vjp_and_finite_differences(kind):
    layer, _, params, x = example(kind)
    report = gradcheck.check_layer(layer, params, x)
    assert set(report.vjp) == {"a_prev"} | {n for n in report.vjp if n != "a_prev"}
    assert report.max("vjp") < 1e-10, report.table()
    assert report.max("fd") < 1e-6, report.table()
    assert sum(report.checked.values()) == x.size + sum(p.size for p in jax.tree.leaves(params))
    assert report.ok()


@pytest.mark.parametrize("kind", KINDS)
def test_layers_without_parameters_have_an_empty_pytree(kind):
    layer, _, params, _ = example(kind)
    if kind in ("dense", "conv", "residual"):
        assert jax.tree.leaves(params)
    else:
        assert params == {}


def test_a_wrong_backward_is_caught():
    class Transposed(layers.Dense):
        def backward(self, params, a_prev, delta):
            grads, delta_prev = super().backward(params, a_prev, delta)
            return {"W": grads["W"], "b": 2 * grads["b"]}, delta_prev

    layer = Transposed(3)
    _, params = layer.init(jax.random.key(0), (4,), dtype=jnp.float64)
    report = gradcheck.check_layer(layer, params, jnp.ones(4, jnp.float64))
    assert report.vjp["['b']"] > 0.3 and report.fd["['b']"] > 0.3
    assert report.vjp["['W']"] < 1e-12
    assert not report.ok()


@pytest.mark.parametrize("name", ["identity", "sigmoid", "relu", "tanh"])
def test_every_activation(name):
    layer = layers.Activation(name)
    x = jax.random.normal(jax.random.key(3), (2, 3), jnp.float64)
    report = gradcheck.check_layer(layer, {}, x)
    assert report.max("vjp") < 1e-12 and report.max("fd") < 1e-6


@pytest.mark.parametrize("kernel, stride, padding", [
    (4, 1, "VALID"), (3, 2, "SAME"), ((2, 3), (2, 1), 1), (3, 1, ((0, 2), (1, 0)))])
def test_conv_matches_the_batched_lax_convolution(kernel, stride, padding):
    layer = layers.Conv(5, kernel, stride, padding)
    shape = (7, 6, 3)
    out_shape, params = layer.init(jax.random.key(0), shape, dtype=jnp.float64)
    X = jax.random.normal(jax.random.key(1), (2, *shape), jnp.float64)
    per_example = jax.vmap(lambda x: layer.forward(params, x)[0])(X)
    lax = fast_conv.conv2d_lax(X, params["W"], params["b"], stride, padding)
    assert per_example.shape == (2, *out_shape)
    np.testing.assert_allclose(per_example, lax, rtol=1e-12, atol=1e-12)
    assert gradcheck.check_layer(layer, params, X[0]).max("vjp") < 1e-10


def test_the_notes_filter_is_a_sum_over_the_window():
    """a = Σ_ij θ_ij x_ij for a 4 × 4 θ at the top-left window of one channel."""
    layer = layers.Conv(1, 4)
    theta = jnp.arange(16.0).reshape(4, 4, 1, 1)
    x = jnp.arange(36.0).reshape(6, 6, 1)
    z, _ = layer.forward({"W": theta, "b": jnp.zeros(1)}, x)
    assert z.shape == (3, 3, 1)
    assert float(z[0, 0, 0]) == float(jnp.sum(theta[:, :, 0, 0] * x[:4, :4, 0]))
    assert float(z[2, 1, 0]) == float(jnp.sum(theta[:, :, 0, 0] * x[2:6, 1:5, 0]))


def test_max_pool_tie_gives_all_to_the_first_cell():
    layer = layers.MaxPool(2)
    x = jnp.ones((2, 2, 1))
    _, delta_prev = layer.backward({}, x, jnp.full((1, 1, 1), 3.0))
    assert delta_prev[:, :, 0].tolist() == [[3.0, 0.0], [0.0, 0.0]]


def test_max_pool_kinks_mark_a_tie():
    layer = layers.MaxPool(2)
    x = jnp.array([[1.0, 1.0], [0.0, 0.0]])[:, :, None]
    report = gradcheck.check_layer(layer, {}, x, h=1e-3)
    assert report.kinks["a_prev"] == 2 and report.max("fd") < 1e-9


def test_residual_adds_the_two_branches():
    layer, _, params, x = example("residual")
    inner = layer.layers
    _, caches = layer.forward(params, x)
    delta = jnp.arange(4.0, dtype=jnp.float64)
    _, delta_prev = layer.backward(params, caches, delta)
    from jaxnn import network

    _, inner_caches = network.forward(inner, params, x)
    _, through_F = network.backward(inner, params, inner_caches, delta)
    np.testing.assert_allclose(delta_prev, delta + through_F, rtol=0, atol=0)


def test_register_refuses_an_incomplete_layer():
    class NoExample:
        def init(self, key, shape):
            return shape, {}

        def forward(self, params, a):
            return a, None

        def backward(self, params, cache, delta):
            return {}, delta

    with pytest.raises(TypeError, match="example"):
        layers.register(NoExample)
