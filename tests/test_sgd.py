import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxnn import DenseNetwork, sgd

from .helpers import problem


def blobs(m=96, dtype=jnp.float64):
    """Three separable Gaussian blobs in 2-D."""
    k1, k2 = jax.random.split(jax.random.key(7))
    y = jax.random.randint(k1, (m,), 0, 3)
    centres = jnp.array([[2.0, 0.0], [-2.0, 1.5], [0.0, -2.0]], dtype)
    return centres[y] + 0.5 * jax.random.normal(k2, (m, 2), dtype), y


def test_update_is_theta_minus_alpha_g():
    params = [{"W": jnp.ones((2, 2)), "b": jnp.zeros(2)}]
    grads = [{"W": jnp.full((2, 2), 2.0), "b": jnp.ones(2)}]
    new = sgd.update(params, grads, 0.25)
    np.testing.assert_array_equal(new[0]["W"], 0.5)
    np.testing.assert_array_equal(new[0]["b"], -0.25)


@pytest.mark.parametrize("source", ["manual", "autodiff"])
def test_explicit_step_equals_optax_sgd(source):
    net, params, X, Y = problem("tanh", "softmax", "softmax", 3, m=24)
    key = jax.random.key(3)
    p1, h1 = sgd.train(net, params, X, Y, key=key, alpha=0.3, epochs=4, batch_size=8,
                       source=source)
    p2, h2 = sgd.train(net, params, X, Y, key=key, epochs=4, batch_size=8, source=source,
                       optimizer=optax.sgd(0.3))
    for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(p2), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(h1["loss"], h2["loss"], rtol=1e-12)


def test_manual_and_autodiff_trajectories_agree():
    net, params, X, Y = problem("relu", "sigmoid", "logistic", 3, m=32)
    key = jax.random.key(0)
    runs = [sgd.train(net, params, X, Y, key=key, alpha=0.5, epochs=5, batch_size=8, source=s)
            for s in ("manual", "autodiff")]
    for a, b in zip(jax.tree.leaves(runs[0][0]), jax.tree.leaves(runs[1][0]), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


def test_trains_to_low_loss_and_high_accuracy():
    X, y = blobs()
    net = DenseNetwork((2, 16, 3), "relu", "softmax", "softmax")
    params = net.init(jax.random.key(0), "he", jnp.float64)
    params, history = sgd.train(net, params, X, y, key=jax.random.key(1), alpha=0.2,
                                epochs=30, batch_size=16)
    assert history["loss"][-1] < 0.15 * history["loss"][0]
    assert history["accuracy"][-1] >= 0.95


def test_loss_falls_for_small_alpha_full_batch():
    net, params, X, Y = problem("sigmoid", "identity", "squared_error", 3, m=16)
    _, history = sgd.train(net, params, X, Y, key=jax.random.key(0), alpha=0.05, epochs=20,
                           batch_size=16)
    assert all(b < a for a, b in zip(history["loss"], history["loss"][1:], strict=False))
    assert history["accuracy"] == [None] * 20


def test_epoch_compiled_once_over_a_run():
    X, y = blobs(m=40, dtype=jnp.float32)
    net = DenseNetwork((2, 7, 3), "tanh", "softmax", "softmax")
    params = net.init(jax.random.key(0))
    before = sgd.epoch_donating._cache_size()
    for source in ("manual", "autodiff"):
        sgd.train(net, params, X, y, key=jax.random.key(1), alpha=0.1, epochs=3, batch_size=8,
                  source=source)
    assert sgd.epoch_donating._cache_size() - before == 2  # one trace per gradient source
    sgd.train(net, params, X, y, key=jax.random.key(2), alpha=0.2, epochs=3, batch_size=8)
    assert sgd.epoch_donating._cache_size() - before == 2  # a new alpha or key reuses it


def test_make_step_matches_update_and_accepts_optax():
    net, params, X, Y = problem("tanh", "identity", "squared_error", 2, m=8)
    step = sgd.make_step(net, "manual")
    new, state, loss = step(params, (), X, Y, 0.1)
    _, grads = net.manual_grad(params, X, Y)
    expected = sgd.update(params, grads, 0.1)
    for a, b in zip(jax.tree.leaves(new), jax.tree.leaves(expected), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-14)
    adam = optax.adam(1e-2)
    step = sgd.make_step(net, "autodiff", adam)
    new, state, _ = step(params, adam.init(params), X, Y, 0.0)
    assert jax.tree.structure(new) == jax.tree.structure(params)


def test_non_finite_loss_stops_with_last_finite_params():
    net, params, X, Y = problem("relu", "identity", "squared_error", 2, m=16)
    with pytest.raises(sgd.NonFiniteError, match=r"epoch \d+, step \d+") as info:
        sgd.train(net, params, X, Y * 1e3, key=jax.random.key(0), alpha=50.0, epochs=50,
                  batch_size=4)
    err = info.value
    assert all(bool(jnp.all(jnp.isfinite(p))) for p in jax.tree.leaves(err.params))
    assert len(err.history["loss"]) == err.epoch


def test_without_skipping_same_run_and_same_bad_step():
    net, params, X, Y = problem("relu", "identity", "squared_error", 2, m=16)
    config = {"key": jax.random.key(0), "epochs": 3, "batch_size": 4}
    kept, hist = sgd.train(net, params, X, Y, alpha=0.05, **config)
    unkept, hist_u = sgd.train(net, params, X, Y, alpha=0.05, skip_nonfinite=False, **config)
    for a, b in zip(jax.tree.leaves(kept), jax.tree.leaves(unkept), strict=True):
        np.testing.assert_array_equal(a, b)  # finite runs: the same program's numbers
    assert hist == hist_u
    errors = []
    for skip in (True, False):
        with pytest.raises(sgd.NonFiniteError) as info:
            sgd.train(net, params, X, Y * 1e3, alpha=50.0, skip_nonfinite=skip,
                      **config | {"epochs": 50})
        errors.append(info.value)
    assert (errors[0].epoch, errors[0].step) == (errors[1].epoch, errors[1].step)
    assert "end of the epoch" in str(errors[1])
    assert not all(bool(jnp.all(jnp.isfinite(p))) for p in jax.tree.leaves(errors[1].params))


def test_in_place_descent_and_the_memory_of_skipping():
    """XLA's buffer accounting of an epoch (mlp_wide: 192 MiB in place, 304 and 248 MiB
    with jax.grad skipping and not)."""
    net = DenseNetwork((64, 2048, 2048, 10), "relu", "softmax", "softmax")
    params = net.init(jax.random.key(0), dtype=jnp.float32)
    X = jax.random.normal(jax.random.key(1), (64, 64), jnp.float32)
    Y = jax.random.randint(jax.random.key(2), (64,), 0, 10)
    params_bytes = sum(p.nbytes for p in jax.tree.leaves(params))
    W_bytes = params[1]["W"].nbytes  # 16 MiB, updated in two blocks of 8 MiB in place
    total, temp = {}, {}
    for source in ("manual", "autodiff"):
        for skip in (True, False):
            compiled = sgd.epoch_donating.lower(
                params, (), X, Y, jax.random.key(3), jnp.float32(0.1), model=net,
                source=source, optimizer=None, batch_size=32, skip_nonfinite=skip).compile()
            m = compiled.memory_analysis()
            assert m.alias_size_in_bytes >= params_bytes  # params donated: updated in place
            temp[source, skip] = m.temp_size_in_bytes
            total[source, skip] = (m.argument_size_in_bytes + m.output_size_in_bytes
                                   - m.alias_size_in_bytes + m.temp_size_in_bytes)
    # jax.grad then update: a whole ∂L/∂W at least; skipping holds every gradient
    assert temp["autodiff", False] >= W_bytes
    assert total["autodiff", True] - total["autodiff", False] > 2 * params[0]["W"].nbytes
    # manual_descent: less than one ∂L/∂W, and skipping costs nothing
    assert temp["manual", True] < 0.6 * W_bytes
    assert abs(total["manual", True] - total["manual", False]) < 1024


def test_descent_used_for_manual_explicit_rows_with_a_large_layer():
    net = DenseNetwork((2049, 1024, 2))  # ∂L/∂W^[1]: 8 MiB + 4 KiB in float32
    big = jax.eval_shape(lambda: net.init(jax.random.key(0), dtype=jnp.float32))
    small = jax.eval_shape(lambda: DenseNetwork((2048, 1024, 2)).init(jax.random.key(0),
                                                                       dtype=jnp.float32))
    assert sgd.descends(net, "manual", None, big)
    assert not sgd.descends(net, "manual", None, small)
    assert not sgd.descends(net, "autodiff", None, big)
    assert not sgd.descends(net, "manual", optax.sgd(0.1), big)
    assert not sgd.descends(DenseNetwork((2049, 1024, 2), grad_form="matrix"), "manual", None,
                            big)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"alpha": -0.1}, ValueError, "alpha must be finite and > 0"),
        ({"alpha": float("nan")}, ValueError, "alpha must be finite"),
        ({"alpha": "0.1"}, TypeError, "alpha must be a number"),
        ({"batch_size": 0}, ValueError, r"batch_size must be an int in \[1, m=8\]"),
        ({"batch_size": 9}, ValueError, "batch_size"),
        ({"epochs": -1}, ValueError, "epochs must be"),
        ({"source": "numeric"}, ValueError, "gradient source must be one of"),
        ({"skip_nonfinite": "no"}, TypeError, "skip_nonfinite must be True or False"),
    ],
)
def test_bad_config(kwargs, error, match):
    net, params, X, Y = problem("relu", "identity", "squared_error", 2, m=8)
    config = {"key": jax.random.key(0), "alpha": 0.1, "epochs": 1, "batch_size": 4} | kwargs
    with pytest.raises(error, match=match):
        sgd.train(net, params, X, Y, **config)


def test_in_place_descent_trains_as_the_whole_gradient_does():
    # a layer over one block: manual steps run as model.manual_descent (in place)
    net = DenseNetwork((2049, 1024, 3), "relu", "softmax", "softmax")
    params = net.init(jax.random.key(0), dtype=jnp.float32)
    X = jax.random.normal(jax.random.key(1), (96, 2049), jnp.float32)
    Y = jax.random.randint(jax.random.key(2), (96,), 0, 3)
    assert sgd.descends(net, "manual", None, params)
    config = {"key": jax.random.key(3), "alpha": 0.01, "epochs": 2, "batch_size": 32}
    before = sgd.epoch_donating._cache_size()
    runs = {s: sgd.train(net, params, X, Y, source=s, **config) for s in ("manual", "autodiff")}
    unkept, _ = sgd.train(net, params, X, Y, skip_nonfinite=False, **config)
    assert sgd.epoch_donating._cache_size() - before == 3  # each traced once, not per epoch
    for a, b, c in zip(*(jax.tree.leaves(r[0]) for r in runs.values()), jax.tree.leaves(unkept),
                       strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
        np.testing.assert_array_equal(a, c)
    np.testing.assert_allclose(runs["manual"][1]["loss"], runs["autodiff"][1]["loss"], rtol=1e-5)
    step = sgd.make_step(net, "manual")
    new, _, loss = step(params, (), X[:32], Y[:32], jnp.float32(0.01))
    _, grads = net.manual_grad(params, X[:32], Y[:32])
    for a, b in zip(jax.tree.leaves(new), jax.tree.leaves(sgd.update(params, grads, 0.01)),
                    strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    bad_X = X.at[40, 7].set(jnp.nan)
    errors = {}
    for source in ("manual", "autodiff"):
        with pytest.raises(sgd.NonFiniteError) as info:
            sgd.train(net, params, bad_X, Y, source=source, **config)
        errors[source] = info.value
    assert (errors["manual"].epoch, errors["manual"].step) == (
        errors["autodiff"].epoch, errors["autodiff"].step) == (0, errors["manual"].step)
    for a, b in zip(jax.tree.leaves(errors["manual"].params),
                    jax.tree.leaves(errors["autodiff"].params), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)  # the last finite ones
