"""The network: one forward loop and one δ recursion for every model; the fast forms
equal the reference; per-example gradients; validation at the public entry."""

import time

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxnn import CNN, DenseNetwork, Network, checkpoint, fast, gradcheck, layers, parallel, sgd
from jaxnn.layers import Activation, Conv, Dense, MaxPool


def residual_net():
    return Network((5,), (Dense(6), Activation("tanh"),
                          layers.Residual((Dense(6), Activation("relu"), Dense(6))),
                          Activation("tanh"), Dense(3)), "softmax", "softmax")


def data(shape, m=12, k=3, seed=0, dtype=jnp.float64):
    X = jax.random.normal(jax.random.key(seed), (m, *shape), dtype)
    return X, jax.random.randint(jax.random.key(seed + 1), (m,), 0, k)


def test_residual_network_three_gradients_agree():
    net = residual_net()
    params = net.init(jax.random.key(0), dtype=jnp.float64)
    X, Y = data((5,))
    report = gradcheck.check(net, params, X, Y)
    assert report.max() < 1e-12
    # central differences round to about eps·|L|/h = 1e-11, against fd_floor 1e-5: 1e-6
    assert report.max("fd_vs_autodiff") < 1e-5, report.table()
    reference = net.reference_grad(params, X, Y)
    chex.assert_trees_all_close(net.manual_grad(params, X, Y), reference, rtol=1e-12)


class Doubled:
    """A layer jaxnn.fast has no batched form of: it runs through fast.batched.Vmapped."""

    def init(self, key, input_shape, method="he", dtype=jnp.float32, **kwargs):
        return tuple(input_shape), {"s": jnp.full(input_shape, 2.0, dtype)}

    def forward(self, params, a_prev):
        return params["s"] * a_prev, a_prev

    def backward(self, params, a_prev, delta):
        return {"s": delta * a_prev}, delta * params["s"]


def test_batched_forms_of_a_residual_block_and_of_any_layer_equal_the_reference():
    net = Network((5,), residual_net().layers[:-1] + (Doubled(), Dense(3)), "softmax",
                  "softmax")
    params = net.init(jax.random.key(0), dtype=jnp.float64)
    X, Y = data((5,))
    batched = tuple(fast.batched(layer) for layer in net.layers)
    assert isinstance(batched[2], layers.Residual) and isinstance(batched[-2],
                                                                    fast.Vmapped)
    chex.assert_trees_all_close(fast.manual_grad(batched, "softmax", "softmax", params, X, Y),
                                net.manual_grad(params, X, Y), rtol=1e-12)


def test_residual_network_trains():
    net = residual_net()
    params = net.init(jax.random.key(0), dtype=jnp.float64)
    X, Y = data((5,), m=48)
    _, history = sgd.train(net, params, X, Y, key=jax.random.key(1), alpha=0.2, epochs=15,
                           batch_size=16)
    assert history["loss"][-1] < 0.6 * history["loss"][0]


DENSE = DenseNetwork((4, 6, 5, 3), "tanh", "softmax", "softmax")
CONV = CNN((7, 6, 2), (Conv(3, 3, padding=1), MaxPool(2), Conv(4, 2, stride=2)), (5, 3),
           "relu", "softmax", "softmax")


@pytest.mark.parametrize("model, shape", [(DENSE, (4,)), (CONV, (7, 6, 2))])
def test_fast_forms_equal_the_reference(model, shape):
    params = model.init(jax.random.key(0), dtype=jnp.float64)
    X, Y = data(shape)
    reference = model.reference_grad(params, X, Y)
    chex.assert_trees_all_close(model.manual_grad(params, X, Y), reference, rtol=1e-12,
                                atol=1e-15)
    per_example = jax.vmap(model.logits_example if hasattr(model, "logits_example") else
                           None, in_axes=(None, 0))(params, X) if hasattr(
        model, "logits_example") else None
    if per_example is not None:
        chex.assert_trees_all_close(model.logits(params, X), per_example, rtol=1e-12)


@pytest.mark.parametrize("grad_form", ["rows", "matrix", "vmap"])
def test_dense_grad_forms_agree(grad_form):
    net = DenseNetwork((4, 6, 3), "sigmoid", "softmax", "cross_entropy", grad_form)
    params = net.init(jax.random.key(0), dtype=jnp.float64)
    X = jax.random.normal(jax.random.key(1), (9, 4), jnp.float64)
    Y = jax.nn.softmax(jax.random.normal(jax.random.key(2), (9, 3), jnp.float64))
    autodiff = jax.grad(net.loss)(params, X, Y)
    chex.assert_trees_all_close(net.manual_grad(params, X, Y)[1], autodiff, rtol=1e-12)


def test_conv_method_lax_equals_im2col():
    params = CONV.init(jax.random.key(0), dtype=jnp.float64)
    X, Y = data((7, 6, 2))
    lax = CNN(CONV.input_shape, CONV.layers, CONV.dense, conv_method="lax")
    chex.assert_trees_all_close(lax.manual_grad(params, X, Y), CONV.manual_grad(params, X, Y),
                                rtol=1e-12)


@pytest.mark.parametrize("model, shape", [(DENSE, (4,)), (CONV, (7, 6, 2))])
def test_per_example_gradients(model, shape):
    params = model.init(jax.random.key(0), dtype=jnp.float64)
    X, Y = data(shape, m=5)
    losses_m, manual = model.per_example_grads(params, X, Y)
    losses_a, autodiff = model.per_example_grads(params, X, Y, source="autodiff")
    chex.assert_trees_all_close(manual, autodiff, rtol=1e-12, atol=1e-15)
    chex.assert_trees_all_close(losses_m, losses_a, rtol=1e-13)
    for i in range(X.shape[0]):  # a plain loop over examples
        one = jax.grad(model.loss)(params, X[i:i + 1], Y[i:i + 1])
        chex.assert_trees_all_close(jax.tree.map(lambda g, i=i: g[i], manual), one, rtol=1e-12,
                                    atol=1e-15)
    mean = jax.tree.map(lambda g: jnp.mean(g, axis=0), manual)
    chex.assert_trees_all_close(mean, model.manual_grad(params, X, Y)[1], rtol=1e-12)
    with pytest.raises(ValueError, match="labels must lie in"):
        model.per_example_grads(params, X, Y.at[0].set(3))


@pytest.mark.parametrize("model, shape", [(DENSE, (4,)), (CONV, (7, 6, 2))])
@pytest.mark.parametrize("label", [3, -1])
def test_out_of_range_labels(model, shape, label):
    params = model.init(jax.random.key(0), dtype=jnp.float64)
    X, Y = data(shape, m=4)
    bad = Y.at[1].set(label)
    for method in (model.loss, model.manual_grad, model.accuracy):
        with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\)"):
            method(params, X, bad)
    assert np.isnan(jax.jit(model.loss)(params, X, bad))
    assert np.isnan(jax.jit(model.manual_grad)(params, X, bad)[0])
    with pytest.raises(sgd.NonFiniteError):
        jit_train_step(model, params, X, bad)


def jit_train_step(model, params, X, Y):
    step = sgd.make_step(model)
    new, _, loss = step(params, (), X, Y, jnp.float64(0.1))
    sgd.finish_epoch(0, new, (), loss[None], jnp.where(jnp.isfinite(loss), -1, 0),
                     {"loss": [], "accuracy": []}, lambda p: None, None)


def test_mixed_dtypes_raise():
    params = CONV.init(jax.random.key(0), dtype=jnp.float32)
    X, Y = data((7, 6, 2), dtype=jnp.float64)
    with pytest.raises(TypeError, match="no silent promotion"):
        CONV.loss(params, X, Y)
    mixed = {"conv": params["conv"], "dense": jax.tree.map(lambda a: a.astype(jnp.float64),
                                                           params["dense"])}
    for method in (CONV.loss, CONV.manual_grad, jax.grad(CONV.loss)):
        with pytest.raises(TypeError, match="mixed parameter dtypes"):
            method(mixed, X, Y)
    from jaxnn import conv

    x = np.zeros((1, 4, 4, 1))
    with pytest.raises(TypeError, match="mixed dtypes"):
        conv.conv2d(x, np.zeros((2, 2, 1, 1), np.float32), np.zeros(1, np.float32))
    with pytest.raises(TypeError, match="mixed dtypes"):
        conv.conv2d_backward(x, np.zeros((2, 2, 1, 1), np.float32), np.zeros((1, 3, 3, 1)))


def test_network_check_names_what_is_wrong():
    net = residual_net()
    params = net.init(jax.random.key(0), dtype=jnp.float64)
    X, Y = data((5,))
    with pytest.raises(ValueError, match=r"expected input of shape \(m, 5\)"):
        net.loss(params, X[:, :4], Y)
    wrong = list(params)
    wrong[0] = {"W": params[0]["W"][:5], "b": params[0]["b"]}
    with pytest.raises(ValueError, match=r"params\[0\]\['W'\]: expected shape \(6, 5\)"):
        net.loss(wrong, X, Y)
    with pytest.raises(TypeError, match="init, forward and backward"):
        Network((5,), (Dense(3), "relu"))
    with pytest.raises(ValueError, match="vector"):
        Network((4, 4, 1), (Conv(2, 3),))


def test_shuffle_false_keeps_the_order():
    net = DenseNetwork((3, 4, 1), "tanh")
    params = net.init(jax.random.key(0), dtype=jnp.float64)
    X = jax.random.normal(jax.random.key(1), (10, 3), jnp.float64)
    Y = X[:, :1] ** 2
    trained, _ = sgd.train(net, params, X, Y, key=jax.random.key(2), alpha=0.1, epochs=2,
                           batch_size=4, shuffle=False)
    by_hand = params
    for _ in range(2):
        for start in (0, 4):  # examples 8 and 9 sit out
            grads = net.manual_grad(by_hand, X[start:start + 4], Y[start:start + 4])[1]
            by_hand = sgd.update(by_hand, grads, 0.1)
    chex.assert_trees_all_close(trained, by_hand, rtol=1e-12)
    shuffled, _ = sgd.train(net, params, X, Y, key=jax.random.key(2), alpha=0.1, epochs=2,
                            batch_size=4)
    assert not np.allclose(shuffled[0]["W"], by_hand[0]["W"])


def test_one_training_loop_with_checkpoints_and_a_mesh(tmp_path):
    net = DenseNetwork((3, 4, 2), "relu", "softmax", "softmax")
    params = net.init(jax.random.key(0), dtype=jnp.float64)
    X, Y = data((3,), m=16, k=2)
    kwargs = dict(key=jax.random.key(1), alpha=0.1, epochs=4, batch_size=4)
    plain, history = sgd.train(net, params, X, Y, **kwargs)
    on_mesh, history_mesh = sgd.train(net, params, X, Y, mesh=parallel.make_mesh(), **kwargs)
    chex.assert_trees_all_close(parallel.local_copy(on_mesh), plain, rtol=1e-13)
    saved, history_saved = sgd.train(net, params, X, Y, checkpoints=checkpoint.Checkpoints(
        tmp_path, every=2), **kwargs | {"epochs": 2})
    assert [s for s, _ in checkpoint.list_checkpoints(tmp_path)] == [8]
    log = []
    resumed, history_resumed = sgd.train(net, params, X, Y, checkpoints=checkpoint.Checkpoints(
        tmp_path, every=2, log=log.append), **kwargs)
    chex.assert_trees_all_equal(resumed, plain)
    assert history_resumed == history == history_mesh
    assert log and "at epoch 2" in log[0]


def test_sgd_with_optax_on_the_network():
    net = residual_net()
    params = net.init(jax.random.key(0), dtype=jnp.float64)
    X, Y = data((5,), m=32)
    _, history = sgd.train(net, params, X, Y, key=jax.random.key(1), epochs=5, batch_size=8,
                           optimizer=optax.adam(1e-2))
    assert history["loss"][-1] < history["loss"][0]


def test_eager_methods_compile_once_per_shape():
    net = DenseNetwork((64, 128, 10), "relu", "softmax", "softmax")
    params = net.init(jax.random.key(0))
    X = jax.random.normal(jax.random.key(1), (32, 64), jnp.float32)
    Y = jax.random.randint(jax.random.key(2), (32,), 0, 10)
    before = type(net)._loss._cache_size()
    net.loss(params, X, Y)
    net.manual_grad(params, X, Y)
    grown = type(net)._loss._cache_size()
    times = []
    for _ in range(20):
        start = time.perf_counter()
        jax.block_until_ready(net.loss(params, X, Y))
        times.append(time.perf_counter() - start)
    assert type(net)._loss._cache_size() == grown <= before + 1
    assert np.median(times) < 0.05  # an eager call reuses the compiled core
