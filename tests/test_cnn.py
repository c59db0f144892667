"""Whole CNNs: manual backward vs jax.grad vs finite differences; forward forms; training."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxnn import gradcheck, sgd
from jaxnn.cnn import CNN, AvgPool, Conv, MaxPool

CONFIGS = {
    "conv-relu-maxpool": CNN((8, 8, 1), (Conv(4, 3), MaxPool(2)), (3,)),
    "two-convs-strides-padding": CNN(
        (9, 7, 3), (Conv(4, 3, stride=2, padding="SAME"), MaxPool(2), Conv(3, 2, padding=1),
                    AvgPool(2, 1)), (5, 3), "tanh"),
    "stride-not-dividing": CNN((7, 9, 2), (Conv(3, 3, stride=2), AvgPool(2)), (4, 2), "sigmoid",
                               "sigmoid", "logistic"),
    "notes-4x4-filter-im2col": CNN((10, 10, 3), (Conv(2, 4), MaxPool(2, 1)), (3,), "relu",
                                   "softmax", "cross_entropy", "im2col"),
    "regression": CNN((6, 6, 1), (Conv(2, 2), MaxPool(2)), (1,), "relu", "identity",
                      "squared_error"),
}


def data(net: CNN, m: int, dtype, seed=1):
    k1, k2 = jax.random.split(jax.random.key(seed))
    X = jax.random.normal(k1, (m,) + net.input_shape, dtype)
    k = net.dense[-1]
    if net.loss_name == "softmax":
        Y = jax.random.randint(k2, (m,), 0, k)
    elif net.output == "softmax":
        Y = jax.nn.softmax(jax.random.normal(k2, (m, k), dtype))
    elif net.output == "sigmoid":
        Y = (jax.random.uniform(k2, (m, k)) > 0.5).astype(dtype)
    else:
        Y = jax.random.normal(k2, (m, k), dtype)
    return X, Y


def setup(name, dtype, m=5):
    net = CONFIGS[name]
    params = net.init(jax.random.key(0), "xavier_normal", dtype)
    params = jax.tree.map(lambda p: p + 0.05 * jnp.ones_like(p), params)  # non-zero biases
    return net, params, *data(net, m, dtype)


@pytest.mark.parametrize("name", CONFIGS)
def test_manual_autodiff_and_finite_differences_float64(name):
    net, params, X, Y = setup(name, jnp.float64)
    report = gradcheck.check(net, params, X, Y, max_coords=150)
    assert report.max() < 1e-10, report.table()
    # central differences, h = 1e-5: see gradcheck.check for the 1e-5 floor
    assert report.max("fd_vs_autodiff") < 1e-6, report.table()
    assert report.max("fd_vs_manual") < 1e-6, report.table()


@pytest.mark.parametrize("name", ["two-convs-strides-padding", "stride-not-dividing",
                                  "notes-4x4-filter-im2col"])
def test_manual_equals_autodiff_float32(name):
    net, params, X, Y = setup(name, jnp.float32)
    with jax.default_matmul_precision("highest"):
        report = gradcheck.check(net, params, X, Y, fd=False)
    # float32 rounding (eps 1.2e-7) in sums of up to a few hundred terms, accumulated in
    # different orders by the two gradients: relative to each leaf's largest entry they
    # agree to a few eps; element-wise, entries near 0 lose the most digits
    assert report.max("manual_vs_autodiff_scaled") < 1e-5, report.table()
    assert report.max() < 1e-2, report.table()


def test_after_training_steps():
    net, params, X, Y = setup("conv-relu-maxpool", jnp.float64, m=16)
    params, history = sgd.train(net, params, X, Y, key=jax.random.key(0), alpha=0.1, epochs=5,
                                batch_size=4)
    report = gradcheck.check(net, params, X, Y, max_coords=200)
    assert report.max() < 1e-10 and report.max("fd_vs_autodiff") < 1e-6, report.table()


@pytest.mark.parametrize("name", ["two-convs-strides-padding", "notes-4x4-filter-im2col"])
def test_vmap_of_one_example_equals_batch(name):
    net, params, X, _ = setup(name, jnp.float64)
    per_example = jax.vmap(net.logits_example, in_axes=(None, 0))(params, X)
    np.testing.assert_allclose(per_example, net.logits(params, X), rtol=1e-13, atol=1e-14)
    loop = jnp.stack([net.logits_example(params, x) for x in X])
    np.testing.assert_allclose(loop, net.logits(params, X), rtol=1e-13, atol=1e-14)


def test_lax_and_im2col_networks_agree():
    base = CONFIGS["two-convs-strides-padding"]
    lax_net, im2col_net = (CNN(base.input_shape, base.layers, base.dense, base.hidden,
                               conv_method=method) for method in ("lax", "im2col"))
    _, params, X, Y = setup("two-convs-strides-padding", jnp.float64)
    np.testing.assert_allclose(lax_net.logits(params, X), im2col_net.logits(params, X),
                               rtol=1e-12)
    g1 = lax_net.manual_grad(params, X, Y)[1]
    g2 = im2col_net.manual_grad(params, X, Y)[1]
    assert gradcheck.compare_trees(g1, g2) and max(gradcheck.compare_trees(g1, g2).values()) < 1e-11


def test_shapes_and_notes_flatten_size():
    net = CNN((64, 64, 3), (Conv(16, 4), MaxPool(2), Conv(32, 3), MaxPool(2)), (2,))
    assert net.feature_shapes() == [(64, 64, 3), (61, 61, 16), (30, 30, 16), (28, 28, 32),
                                    (14, 14, 32)]
    assert net.sizes == (14 * 14 * 32, 2)
    assert CNN((64, 64, 3), (), (2,)).sizes == (12288, 2)
    params = net.init(jax.random.key(0))
    assert params["conv"][0]["W"].shape == (4, 4, 3, 16)
    assert params["dense"][0]["W"].shape == (2, 6272)


def test_trains_sgd_and_optax():
    net, params, X, Y = setup("conv-relu-maxpool", jnp.float64, m=24)
    p1, h1 = sgd.train(net, params, X, Y, key=jax.random.key(0), alpha=0.2, epochs=8,
                       batch_size=8, source="manual")
    p2, h2 = sgd.train(net, params, X, Y, key=jax.random.key(0), epochs=8, batch_size=8,
                       source="autodiff", optimizer=optax.sgd(0.2))
    assert h1["loss"][-1] < 0.5 * h1["loss"][0]
    for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(p2), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-11)


def test_bad_configuration_and_input():
    with pytest.raises(ValueError, match="input_shape"):
        CNN((8, 8), (), (2,))
    with pytest.raises(ValueError, match="larger than|kernel"):
        CNN((3, 3, 1), (Conv(2, 4),), (2,))
    with pytest.raises(TypeError, match="Conv or Pool"):
        CNN((8, 8, 1), ("conv",), (2,))
    with pytest.raises(ValueError, match="pool kind"):
        from jaxnn.cnn import Pool
        Pool(2, kind="min_pool")
    with pytest.raises(ValueError, match="stride"):
        CNN((8, 8, 1), (Conv(2, 3, stride=0),), (2,))
    with pytest.raises(ValueError, match="padding"):
        CNN((8, 8, 1), (Conv(2, 3, padding="FULL"),), (2,))
    net, params, X, Y = setup("conv-relu-maxpool", jnp.float32)
    with pytest.raises(
            ValueError, match=r"expected input of shape \(m, 8, 8, 1\), got shape \(8, 8, 1\)"):
        net.check(params, X[0], Y)
    with pytest.raises(
            ValueError, match=r"expected input of shape \(m, 8, 8, 1\), got shape \(2, 8, 8, 3\)"):
        net.check(params, jnp.ones((2, 8, 8, 3), jnp.float32))
    with pytest.raises(
            ValueError, match=r"params\['conv'\]\[0\]\['W'\]: expected shape \(3, 3, 1, 4\)"):
        bad = {"conv": [{"W": jnp.ones((3, 3, 2, 4), jnp.float32), "b": jnp.ones(4)}],
               "dense": params["dense"]}
        net.check(bad, X)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\)"):
        net.check(params, X, jnp.array([0, 1, 2, 3, 0]))
