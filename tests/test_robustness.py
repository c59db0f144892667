"""Bad input gets a clear error, extreme values stay finite, the same seed gives the same bits.

The bad-input table covers what tests/test_{dense,losses,initializers,sgd}.py do not;
each case names the call, the exception and the words the message must contain.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from jaxnn import DenseNetwork, activations, dense, initializers, losses, sgd

from .helpers import PAIRS, problem

KEY = jax.random.key(0)


def regression():
    net = DenseNetwork((4, 3, 2), "relu", "identity", "squared_error")
    params = net.init(KEY, "he", jnp.float64)
    return net, params, jnp.ones((5, 4)), jnp.ones((5, 2))


def classifier():
    net = DenseNetwork((4, 3, 3), "tanh", "softmax", "softmax")
    params = net.init(KEY, "he", jnp.float64)
    return net, params, jnp.ones((5, 4)), jnp.array([0, 1, 2, 1, 0])


def train(net, params, X, Y, **kwargs):
    config = {"key": KEY, "alpha": 0.1, "epochs": 1, "batch_size": 5} | kwargs
    return sgd.train(net, params, X, Y, **config)


def per_example(fn, *args):
    return lambda: fn(*args)


R, C = regression(), classifier()
v3, v2 = jnp.ones(3), jnp.ones(2)

BAD = {
    # model methods check (params, X, Y) before computing
    "loss: (m,) targets for k=2": (lambda: R[0].loss(R[1], R[2], jnp.ones(5)), ValueError,
                                   r"targets of shape \(5, 2\) \(same as ŷ\), got shape \(5,\)"),
    "manual_grad: (m, 1) targets for k=2": (
        lambda: R[0].manual_grad(R[1], R[2], jnp.ones((5, 1))), ValueError,
        r"got shape \(5, 1\)"),
    "loss: float32 targets, float64 params": (
        lambda: R[0].loss(R[1], R[2], jnp.ones((5, 2), jnp.float32)), TypeError,
        "targets have dtype float32, the parameters float64"),
    "loss: integer inputs": (lambda: R[0].loss(R[1], jnp.ones((5, 4), jnp.int32), R[3]),
                             TypeError, "input must be floating"),
    "predict: a list as input": (lambda: R[0].predict(R[1], [[1.0] * 4]), TypeError,
                                 r"expected input as an array of shape \(m, 4\).*got list"),
    "logits: float32 input, float64 params": (
        lambda: R[0].logits(R[1], jnp.ones((5, 4), jnp.float32)), TypeError,
        "no silent promotion"),
    "loss: label out of range": (
        lambda: C[0].loss(C[1], C[2], jnp.array([0, 1, 3, 1, 0])), ValueError,
        r"labels must lie in \[0, 3\), got values in \[0, 3\]"),
    "accuracy: float labels": (lambda: C[0].accuracy(C[1], C[2], C[3].astype(float)),
                               TypeError, "expects integer labels, got dtype float64"),
    "accuracy: (m, 1) labels": (lambda: C[0].accuracy(C[1], C[2], C[3][:, None]), ValueError,
                                r"integer labels of shape \(5,\), got shape \(5, 1\)"),
    "network: sizes with a bool": (lambda: DenseNetwork((True, 2)), ValueError,
                                   "sizes must be positive ints, got \\(True, 2\\)"),
    "network: sizes as a string": (lambda: DenseNetwork("42"), ValueError,
                                   "sizes must be a sequence"),
    # dense forward, three forms
    "forward: a batch where one example goes": (
        lambda: dense.forward(R[1], R[2]), ValueError,
        r"expected input of shape \(4,\), got shape \(5, 4\)"),
    "forward: softmax as hidden activation": (
        lambda: dense.forward(R[1], R[2][0], "softmax"), ValueError,
        "hidden activation must be one of"),
    "forward_batch: relu as output": (lambda: dense.forward_batch(R[1], R[2], "relu", "relu"),
                                      ValueError, "output activation must be one of"),
    "forward_matrix: (m, n_0) instead of (n_0, m)": (
        lambda: dense.forward_matrix(R[1], jnp.ones((5, 4))), ValueError,
        r"X of shape \(n_0=4, m\), examples as columns, got shape \(5, 4\)"),
    "forward_matrix: integer X": (
        lambda: dense.forward_matrix(R[1], jnp.ones((4, 5), jnp.int32)), TypeError,
        "input dtype int32 differs"),
    "logits: wrong input size": (lambda: dense.logits(R[1], v3, "relu"), ValueError,
                                 r"expected input of shape \(4,\), got shape \(3,\)"),
    # per-example losses and δ^[N]
    "squared_error: (k,) vs (k, 1)": (per_example(losses.squared_error, v3, jnp.ones((3, 1))),
                                      ValueError, r"target y of shape \(3,\) \(same as ŷ\)"),
    "logistic: integer targets": (per_example(losses.logistic, v3 / 2, jnp.ones(3, int)),
                                  TypeError, "expects a floating target y"),
    "cross_entropy_from_logits: a scalar target": (
        per_example(losses.cross_entropy_from_logits, v3, 1.0), ValueError,
        r"got shape \(\)"),
    "logistic_from_logits: a batch of logits": (
        per_example(losses.logistic_from_logits, jnp.ones((2, 3)), jnp.ones((2, 3))), ValueError,
        r"z of one example, shape \(k,\), got shape \(2, 3\)"),
    "softmax_loss_from_logits: label k": (per_example(losses.softmax_loss_from_logits, v3, 3),
                                          ValueError, r"label must lie in \[0, 3\), got 3"),
    "softmax_loss: label -1": (per_example(losses.softmax_loss, v3 / 3, -1), ValueError,
                               r"label must lie in \[0, 3\), got -1"),
    "softmax_loss_grad: a float label": (per_example(losses.softmax_loss_grad, v3 / 3, 1.0),
                                         TypeError, "expects an integer label"),
    "softmax_loss_from_logits: a vector of labels": (
        per_example(losses.softmax_loss_from_logits, v3, jnp.array([0, 1])), ValueError,
        r"one integer label per example \(shape \(\)\), got shape \(2,\)"),
    "squared_error: integer ŷ": (per_example(losses.squared_error, jnp.ones(3, int), v3),
                                 TypeError, "expects a floating ŷ"),
    "cross_entropy: a list as target": (per_example(losses.cross_entropy, v3 / 3, [1.0] * 3),
                                        TypeError, "y must be an array, got a list"),
    "one_hot: float labels": (per_example(losses.one_hot, 1.5, 3, jnp.float32), TypeError,
                              "one_hot expects integer labels"),
    "output_loss: identity with logistic": (
        per_example(losses.output_loss, "identity", "logistic", v3, v3), ValueError,
        r"needs an output activation in \('sigmoid',\)"),
    "delta_output: identity with softmax": (
        per_example(losses.delta_output, "identity", "softmax", v3, 1), ValueError,
        "needs an output activation"),
    "delta_output: label out of range": (
        per_example(losses.delta_output, "softmax", "softmax", v3, 7), ValueError,
        r"label must lie in \[0, 3\)"),
    "delta_output_general: wrong target shape": (
        per_example(losses.delta_output_general, "sigmoid", "squared_error", v3, v2), ValueError,
        r"target y of shape \(3,\)"),
    "accuracy: unknown loss": (per_example(losses.accuracy, "hinge", jnp.ones((2, 3)), v2),
                               ValueError, "unknown loss 'hinge'"),
    "batch_loss: ŷ of one example": (per_example(losses.batch_loss, "squared_error", v3, v3),
                                     ValueError, r"outputs of shape \(m, k\), got shape \(3,\)"),
    # initialisation
    "init: integer dtype": (lambda: dense.init(KEY, (3, 2), "he", jnp.int32), TypeError,
                            "floating dtype, got int32"),
    "init: negative sigma": (lambda: dense.init(KEY, (3, 2), "normal", sigma=-1.0), ValueError,
                             "sigma must be a finite number > 0, got -1.0"),
    "init: NaN sigma": (lambda: dense.init(KEY, (3, 2), "normal", sigma=float("nan")),
                        ValueError, "sigma must be a finite number > 0"),
    "init: sigma as text": (lambda: initializers.normal(KEY, (3, 2), sigma="0.1"), ValueError,
                            "sigma must be a finite number"),
    "initializer: negative dimension": (lambda: initializers.he(KEY, (3, -2)), ValueError,
                                        r"positive ints, got \(3, -2\)"),
    "initializer: int key": (lambda: initializers.xavier_normal(0, (3, 2)), TypeError,
                             "expected a jax.random key"),
    "initializer: integer dtype": (lambda: initializers.zeros(KEY, (3, 2), jnp.int8), TypeError,
                                   "floating dtype, got int8"),
    # training configuration
    "train: int key": (lambda: train(*R, key=0), TypeError, "expected a jax.random key"),
    "train: bool learning rate": (lambda: train(*R, alpha=True), TypeError,
                                  "alpha must be a number"),
    "train: infinite learning rate": (lambda: train(*R, alpha=float("inf")), ValueError,
                                      "alpha must be finite and > 0, got inf"),
    "train: float epochs": (lambda: train(*R, epochs=2.0), TypeError,
                            "epochs must be an int, got float 2.0"),
    "train: bool batch size": (lambda: train(*R, batch_size=True), TypeError,
                               "batch_size must be an int, got bool True"),
    "train: optimizer factory, not optimizer": (lambda: train(*R, optimizer=optax.adam),
                                                TypeError, "optax.GradientTransformation"),
    "train: state of another optimizer": (
        lambda: train(*R, optimizer=optax.adam(0.1), opt_state=optax.sgd(0.1, 0.9).init(R[1])),
        ValueError, r"opt_state does not fit the optimiser: missing leaves \['\[0\].count'"),
    "train: state of another dtype": (
        lambda: train(*R, optimizer=optax.sgd(0.1, 0.9), opt_state=optax.sgd(0.1, 0.9).init(
            jax.tree.map(lambda p: p.astype(jnp.float32), R[1]))), ValueError,
        r"opt_state\[0\].trace\[0\]\['W'\]: expected float64\[3, 4\], got float32\[3, 4\]"),
    "train: on_epoch not callable": (lambda: train(*R, on_epoch="print"), TypeError,
                                     "on_epoch must be callable"),
    "train: start_epoch past epochs": (lambda: train(*R, epochs=2, start_epoch=3), ValueError,
                                       r"start_epoch must be an int in \[0, epochs=2\], got 3"),
    "train: resume without history": (lambda: train(*R, epochs=2, start_epoch=1), ValueError,
                                      "needs the history of the epochs before"),
    "train: history of the wrong length": (
        lambda: train(*R, epochs=3, start_epoch=2, history={"loss": [1.0], "accuracy": [None]}),
        ValueError, "history must hold the 2 epochs before start_epoch"),
    "make_step: targets of the wrong shape": (
        lambda: sgd.make_step(R[0])(R[1], (), R[2], jnp.ones(5), 0.1), ValueError,
        r"targets of shape \(5, 2\)"),
    "batch_indices: batch of 0": (lambda: sgd.batch_indices(KEY, 5, 0), ValueError,
                                  r"batch_size must be an int in \[1, m=5\], got 0"),
}


@pytest.mark.parametrize("name", list(BAD))
def test_bad_input_raises_clear_error(name):
    call, error, match = BAD[name]
    with pytest.raises(error, match=match):
        call()


def test_numpy_scalars_are_accepted_where_python_ones_are():
    net, params, X, Y = R
    p1, h1 = train(net, params, X, Y, alpha=np.float32(0.5), epochs=np.int64(2),
                   batch_size=np.int32(5))
    p2, h2 = train(net, params, X, Y, alpha=0.5, epochs=2, batch_size=5)
    assert h1 == h2
    assert DenseNetwork(np.array([4, 3, 2])).sizes == (4, 3, 2)


# --- numerical extremes ---------------------------------------------------------------------


def finite(tree) -> bool:
    return all(bool(np.all(np.isfinite(x))) for x in jax.tree.leaves(tree))


@jax.jit(static_argnums=0)
def evaluate(net, params, X, Y):
    """Loss, manual and autodiff gradients, logits and both forward forms, compiled once per
    network and shapes: far cheaper than running a few hundred operations eagerly, each
    compiled for its own shapes."""
    with jax.default_matmul_precision("highest"):
        loss, manual = net.manual_grad(params, X, Y)
        value, autodiff = jax.value_and_grad(net.loss)(params, X, Y)
        vmapped = dense.forward_batch(params, X, net.hidden, net.output)
        matrix = dense.forward_matrix(params, X.T, net.hidden, net.output).T
        return {"loss": loss, "manual": manual, "value": value, "autodiff": autodiff,
                "logits": net.logits(params, X), "vmapped": vmapped, "matrix": matrix}


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
@pytest.mark.parametrize("output, loss", PAIRS)
def test_loss_and_both_gradients_finite_for_logits_1e4(output, loss, dtype):
    net, params, X, Y = problem("tanh", output, loss, 2, dtype)
    k = params[-1]["b"].shape[0]
    # the output bias puts every z^[N] at ±1e4 (+ a term of order 1 from W^[2] a^[1])
    params[-1]["b"] = jnp.asarray([1e4, -1e4, 1e4][:k], dtype)
    out = evaluate(net, params, X, Y)
    assert float(np.min(np.abs(out["logits"]))) > 9e3
    assert out["loss"].dtype == dtype and bool(np.isfinite(out["loss"]))
    assert finite(out["manual"]) and finite(out["autodiff"])
    np.testing.assert_allclose(out["loss"], out["value"], rtol=1e-6)
    for a, b in zip(jax.tree.leaves(out["manual"]), jax.tree.leaves(out["autodiff"]),
                    strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5 * (float(np.max(np.abs(b))) or 1.0))


@jax.jit
def from_logits_forms(z, y):
    labels = jnp.arange(z.shape[0])
    softmax_loss = functools.partial(losses.softmax_loss_from_logits, z)
    return {
        "logistic": losses.logistic_from_logits(z, y),
        "logistic_grad": jax.grad(losses.logistic_from_logits)(z, y),
        "logistic_delta": losses.delta_output("sigmoid", "logistic", z, y),
        "softmax": jax.vmap(softmax_loss)(labels),
        "softmax_grad": jax.vmap(jax.grad(losses.softmax_loss_from_logits), (None, 0))(z, labels),
    }


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_from_logits_losses_at_1e4_match_closed_forms(dtype):
    z = jnp.array([1e4, -1e4, 5.0], dtype)
    y = jnp.array([0.0, 1.0, 1.0], dtype)  # both saturated units wrong
    out = from_logits_forms(z, y)
    assert all(value.dtype == dtype for value in out.values()) and finite(out)
    np.testing.assert_allclose(out["logistic"], 2e4 + np.log1p(np.exp(-5.0)), rtol=1e-6)
    sigma_minus_y = np.array([1.0, -1.0, 1 / (1 + np.exp(-5.0)) - 1])
    # σ(5) - 1 cancels: float32 keeps it to about eps = 1.2e-7 absolute
    np.testing.assert_allclose(out["logistic_grad"], sigma_minus_y, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(out["logistic_delta"], sigma_minus_y, rtol=1e-6, atol=1e-7)
    # softmax loss of label j = logsumexp(z) - z_j; its gradient softmax(z) - e_j
    np.testing.assert_allclose(out["softmax"], [0.0, 2e4, 1e4 - 5.0], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(out["softmax_grad"], np.array([1.0, 0, 0]) - np.eye(3),
                               atol=1e-6)


@jax.jit
def softmax_forms(z):
    return (activations.softmax(z), activations.softmax_jvp(z, jnp.ones_like(z)),
            jax.jacobian(activations.softmax)(z))


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_softmax_of_extreme_logits(dtype):
    big = float(jnp.finfo(dtype).max) / 2
    cases = {
        (1e4, 1e4, 1e4): [1 / 3] * 3,
        (1e4, 1e4 - np.log(3.0), -1e4): [0.75, 0.25, 0.0],
        (big, -big, 0.0): [1.0, 0.0, 0.0],
        (-1e4, -1e4, -1e4 - 1000): [0.5, 0.5, 0.0],
    }
    for z, expected in cases.items():
        s, jvp, jacobian = softmax_forms(jnp.asarray(z, dtype))
        assert s.dtype == dtype and finite((s, jvp, jacobian))
        # float32 keeps 1e4 - log 3 to about 5e-4, hence the looser tolerance
        np.testing.assert_allclose(s, expected, rtol=1e-3 if dtype == jnp.float32 else 1e-9,
                                   atol=1e-30)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
@pytest.mark.parametrize("name", ["sigmoid", "tanh"])
def test_saturated_sigmoid_and_tanh(name, dtype):
    act = activations.get(name)
    z = jnp.array([-1e30, -1e4, -100.0, 100.0, 1e4, 1e30], dtype)
    g, g_prime, auto = jax.jit(lambda z: (act.g(z), act.g_prime(z),
                                          jax.vmap(jax.grad(act.g))(z)))(z)
    g, g_prime, auto = np.asarray(g), np.asarray(g_prime), np.asarray(auto)
    low = 0.0 if name == "sigmoid" else -1.0
    np.testing.assert_array_equal(g[[0, 1, 4, 5]], [low, low, 1.0, 1.0])
    np.testing.assert_allclose(g[[2, 3]], [low, 1.0], atol=1e-30)
    assert finite(g_prime) and bool(np.all(g_prime >= 0))
    np.testing.assert_array_equal(g_prime[[0, 1, 4, 5]], 0.0)
    np.testing.assert_allclose(auto, g_prime, atol=1e-30)


@pytest.mark.parametrize("hidden", ["sigmoid", "tanh"])
def test_saturated_deep_network_gradients_finite_and_equal(hidden):
    net, params, X, Y = problem(hidden, "softmax", "cross_entropy", 4, jnp.float32)
    params = [{"W": 300.0 * p["W"], "b": p["b"]} for p in params]  # every unit saturates
    out = evaluate(net, params, X, Y)
    assert bool(np.isfinite(out["loss"])) and finite(out["manual"]) and finite(out["autodiff"])
    for a, b in zip(jax.tree.leaves(out["manual"]), jax.tree.leaves(out["autodiff"]),
                    strict=True):
        np.testing.assert_allclose(a, b, atol=1e-4 * (float(np.max(np.abs(b))) or 1.0))


# --- property-based: random shapes, depths and values -----------------------------------------

@st.composite
def networks(draw):
    """(net, params, X, Y, dtype): random depth 1-4, widths 1-6, m 1-6, weight scale 1e-2..1e2.

    Values come from numpy's generator: JAX's would compile a kernel for every new shape.
    """
    output, loss = draw(st.sampled_from(PAIRS))
    hidden = draw(st.sampled_from(["relu", "tanh", "sigmoid", "identity"]))
    dtype = draw(st.sampled_from([np.float64, np.float32]))
    depth = draw(st.integers(1, 4))
    k = draw(st.integers(2, 4)) if output == "softmax" else draw(st.integers(1, 3))
    sizes = (draw(st.integers(1, 5)),) + tuple(draw(st.lists(
        st.integers(1, 6), min_size=depth - 1, max_size=depth - 1))) + (k,)
    m = draw(st.integers(1, 6))
    scale = 10.0 ** draw(st.integers(-2, 2) if dtype == np.float64 else st.integers(-2, 1))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    params = [{"W": jnp.asarray(scale * rng.standard_normal((n_out, n_in)), dtype),
               "b": jnp.asarray(scale * rng.standard_normal(n_out), dtype)}
              for n_in, n_out in zip(sizes[:-1], sizes[1:], strict=True)]
    X = jnp.asarray(rng.standard_normal((m, sizes[0])), dtype)
    if loss == "softmax":
        Y = jnp.asarray(rng.integers(0, k, m))
    elif output == "softmax":
        Y = rng.exponential(size=(m, k))
        Y = jnp.asarray(Y / Y.sum(axis=1, keepdims=True), dtype)
    elif output == "sigmoid":
        Y = jnp.asarray(rng.integers(0, 2, (m, k)), dtype)
    else:
        Y = jnp.asarray(rng.standard_normal((m, k)), dtype)
    return DenseNetwork(sizes, hidden, output, loss), params, X, Y, dtype


@settings(max_examples=20, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow],
          phases=[Phase.explicit, Phase.generate])  # no shrinking: every example compiles
@given(networks())
def test_gradients_agree_where_finite_and_forward_forms_agree(case):
    net, params, X, Y, dtype = case
    out = evaluate(net, params, X, Y)
    manual, autodiff, vmapped, matrix = (out[name] for name in ("manual", "autodiff",
                                                                "vmapped", "matrix"))
    # manual vs autodiff: within rtol of the largest entry of each leaf, or within a few
    # roundings of the terms the gradient sums. Those terms grow with the loss, the inputs
    # and every layer's weights; where they cancel (a saturated softmax under squared
    # error, say) the gradient is far smaller than they are, and only that absolute
    # accuracy is attainable by either computation.
    eps = float(np.finfo(dtype).eps)
    rtol = 1e-9 if dtype == np.float64 else 2e-3
    terms = (1 + abs(float(out["loss"]))) * max(1.0, float(np.max(np.abs(X))))
    for p in params:
        terms *= max(1.0, float(np.linalg.norm(np.asarray(p["W"], np.float64))))
    for a, b in zip(jax.tree.leaves(manual), jax.tree.leaves(autodiff), strict=True):
        both = np.isfinite(np.asarray(a)) & np.isfinite(np.asarray(b))
        a, b = np.asarray(a)[both], np.asarray(b)[both]
        scale = max(np.max(np.abs(a), initial=0.0), np.max(np.abs(b), initial=0.0))
        difference = np.max(np.abs(a - b), initial=0.0)
        assert difference <= rtol * scale + 100 * eps * terms, (net, difference, scale, terms)
    # dense.forward vmapped over examples vs the matrix form Z = W X + b
    assert vmapped.shape == matrix.shape == (X.shape[0], net.sizes[-1])
    assert vmapped.dtype == matrix.dtype == dtype
    rtol = 1e-12 if dtype == np.float64 else 1e-5
    scale = float(np.max(np.abs(vmapped)))
    np.testing.assert_allclose(matrix, vmapped, rtol=rtol, atol=rtol * scale)


# --- determinism ---------------------------------------------------------------------------------


@pytest.mark.parametrize("optimizer", [None, optax.adam(1e-2)], ids=["explicit", "adam"])
def test_same_seed_same_bits(optimizer):
    def run(seed):
        net = DenseNetwork((3, 8, 3), "relu", "softmax", "softmax")
        k_init, k_data, k_train = jax.random.split(jax.random.key(seed), 3)
        params = net.init(k_init, "he", jnp.float32)
        X = jax.random.normal(k_data, (40, 3), jnp.float32)
        y = jnp.argmax(X, axis=1)
        return sgd.train(net, params, X, y, key=k_train, alpha=0.2, epochs=4, batch_size=8,
                         optimizer=optimizer)

    (p1, h1), (p2, h2), (p3, _) = run(0), run(0), run(1)
    assert h1 == h2  # losses and accuracies, as Python floats
    for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(p2), strict=True):
        assert a.dtype == jnp.float32
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(p1[0]["W"], p3[0]["W"])
