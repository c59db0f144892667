"""Manual δ recursion vs jax.grad vs finite differences, every hidden x output/loss x depth."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxnn import DenseNetwork, backprop, dense, fast, gradcheck

from .helpers import PAIRS, problem

# float32: the forward pass rounds at about eps = 1.2e-7 per operation and the two
# gradients accumulate their sums in different orders. Relative to each leaf's largest
# entry they agree to a few eps (1e-5 leaves room for depth-4 products of a few dozen
# terms); element-wise, an entry that is a sum of much larger terms of both signs keeps
# fewer digits (1.2e-4 seen), hence the looser element-wise bound.
TOL_SCALED_F32, TOL_ELEMENTWISE_F32 = 1e-5, 1e-2


@pytest.mark.parametrize("hidden", ["relu", "tanh", "sigmoid"])
@pytest.mark.parametrize("output, loss", PAIRS)
@pytest.mark.parametrize("depth", [1, 2, 5])  # depth 3: test_finite_differences_float64
def test_manual_equals_autodiff_float64(hidden, output, loss, depth):
    net, params, X, Y = problem(hidden, output, loss, depth, jnp.float64)
    report = gradcheck.check(net, params, X, Y, fd=False)
    # element-wise with no floor: an entry that is a sum of much larger terms of both
    # signs keeps fewer digits (1.5e-12 seen at depth 5); typical entries agree to 1e-15
    assert report.max() < 1e-10, report.table()


@pytest.mark.parametrize("hidden", ["relu", "tanh"])
@pytest.mark.parametrize("output, loss", PAIRS)
def test_manual_equals_autodiff_float32(hidden, output, loss):
    net, params, X, Y = problem(hidden, output, loss, 4, jnp.float32)
    with jax.default_matmul_precision("highest"):
        report = gradcheck.check(net, params, X, Y, fd=False)
    assert report.max("manual_vs_autodiff_scaled") < TOL_SCALED_F32, report.table()
    assert report.max() < TOL_ELEMENTWISE_F32, report.table()


@pytest.mark.parametrize("hidden", ["relu", "tanh", "sigmoid"])
@pytest.mark.parametrize("output, loss", PAIRS)
def test_finite_differences_float64(hidden, output, loss):
    net, params, X, Y = problem(hidden, output, loss, 3, jnp.float64)
    report = gradcheck.check(net, params, X, Y)
    assert report.max() < 1e-10, report.table()
    # central differences with h = 1e-5 are accurate to ~1e-11 absolute; fd_floor = 1e-5
    # (see gradcheck.check) turns that into the relative bound below
    assert report.max("fd_vs_autodiff") < 1e-6, report.table()
    assert report.max("fd_vs_manual") < 1e-6, report.table()
    assert sum(report.checked.values()) == sum(p.size for p in jax.tree.leaves(params))


def test_one_neuron_relu_gradient_by_hand():
    """f(x) = max(ax + b, 0) with squared error: dL/da = (f - y) x 1[ax + b > 0]."""
    net = DenseNetwork((1, 1), "relu", "identity", "squared_error")
    a, b = 2.0, -1.0
    X = jnp.array([[0.25], [1.0], [3.0]], jnp.float64)
    Y = jnp.array([[0.0], [2.0], [4.0]], jnp.float64)
    # one layer: the output is the identity; put the ReLU in a 2-layer net with fixed output
    params = [{"W": jnp.array([[a]]), "b": jnp.array([b])},
              {"W": jnp.array([[1.0]]), "b": jnp.array([0.0])}]
    net = DenseNetwork((1, 1, 1), "relu", "identity", "squared_error")
    loss, grads = net.manual_grad(params, X, Y)
    x, y = np.array([0.25, 1.0, 3.0]), np.array([0.0, 2.0, 4.0])
    z = a * x + b
    f = np.maximum(z, 0)
    on = (z > 0).astype(float)
    np.testing.assert_allclose(loss, np.mean(0.5 * (f - y) ** 2))
    np.testing.assert_allclose(grads[0]["W"][0, 0], np.mean((f - y) * on * x))
    np.testing.assert_allclose(grads[0]["b"][0], np.mean((f - y) * on))
    auto = jax.grad(net.loss)(params, X, Y)
    np.testing.assert_allclose(grads[0]["W"], auto[0]["W"], rtol=1e-14)


@pytest.mark.parametrize("output, loss", PAIRS)
def test_vmap_and_matrix_forms_agree(output, loss):
    net, params, X, Y = problem("tanh", output, loss, 3)
    l1, g1 = backprop.grad_vmap(params, X, Y, "tanh", output, loss)
    l2, g2 = backprop.grad_matrix(params, X, Y, "tanh", output, loss)
    np.testing.assert_allclose(l1, l2, rtol=1e-14)
    for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-15)


def test_delta_0_is_gradient_wrt_input():
    net, params, X, Y = problem("sigmoid", "softmax", "softmax", 3)
    x, y = X[0], Y[0]
    from jaxnn import dense, losses
    zs, a_s = dense.forward_cache(params, x, "sigmoid", "softmax")
    delta_N = losses.delta_output("softmax", "softmax", zs[-1], y)
    _, delta_0 = backprop.backward(params, zs, a_s, delta_N, jax.nn.sigmoid)
    del delta_0
    from jaxnn.activations import sigmoid_prime
    _, delta_0 = backprop.backward(params, zs, a_s, delta_N, sigmoid_prime)
    auto = jax.grad(lambda x: losses.output_loss(
        "softmax", "softmax", dense.logits(params, x, "sigmoid"), y))(x)
    np.testing.assert_allclose(delta_0, auto, rtol=1e-12)


def test_kinks_detected_not_counted():
    """A ReLU net with a pre-activation within h of 0: that coordinate is reported apart."""
    net = DenseNetwork((1, 1, 1), "relu", "identity", "squared_error")
    params = [{"W": jnp.array([[1.0]]), "b": jnp.array([-1.0 + 3e-6])},
              {"W": jnp.array([[1.0]]), "b": jnp.array([0.0])}]
    X = jnp.array([[1.0]], jnp.float64)
    Y = jnp.array([[5.0]], jnp.float64)
    report = gradcheck.check(net, params, X, Y)
    assert report.kinks["[0]['W']"] == 1 and report.kinks["[0]['b']"] == 1
    # the kink-free coordinates have gradients near 1e-5 and L = 12.5, so rounding
    # (eps L / h ~ 3e-10) alone is ~2e-5 of them
    assert report.max("fd_vs_autodiff") < 1e-4
    # without kink detection the same quotient is off by about half the jump
    _, fd, kinks = gradcheck.finite_differences(
        lambda p: net.loss(p, X, Y), params, pattern_fn=lambda p: net.kink_pattern(p, X))
    auto = jax.flatten_util.ravel_pytree(jax.grad(net.loss)(params, X, Y))[0]
    assert kinks[0] and abs(fd[0] - auto[0]) > 0.1


def test_delta_t_a_is_the_sum_of_outer_products():
    # Δᵀ A = Σ_i δ(i) a(i)ᵀ, also under jax.grad and jax.vmap (the barriers are transparent)
    D = jax.random.normal(jax.random.key(0), (5, 3), jnp.float64)
    A = jax.random.normal(jax.random.key(1), (5, 4), jnp.float64)
    outer = sum(np.outer(np.asarray(D[i]), np.asarray(A[i])) for i in range(5))
    np.testing.assert_allclose(fast.delta_t_a(D, A), outer, rtol=1e-13, atol=1e-14)
    np.testing.assert_allclose(jax.jit(fast.delta_t_a)(D, A), outer, rtol=1e-13, atol=1e-14)
    grad = jax.grad(lambda D: jnp.sum(fast.delta_t_a(D, A) ** 2))(D)
    np.testing.assert_allclose(grad, 2 * A @ (D.T @ A).T, rtol=1e-13)
    batched = jax.vmap(fast.delta_t_a)(jnp.stack([D, 2 * D]), jnp.stack([A, A]))
    np.testing.assert_allclose(batched[1], 2 * outer, rtol=1e-13, atol=1e-14)


def network(params, hidden, output, loss):
    return DenseNetwork(dense.sizes_of(params), hidden, output, loss)


def descend(params, X, Y, alpha, hidden, output, loss, allow=None,
            block_bytes=fast.descent.BLOCK_BYTES):
    """One in-place step of ``jaxnn.fast.descent`` through ``DenseNetwork.manual_descent``."""
    step = jax.jit(network(params, hidden, output, loss).manual_descent,
                   static_argnames="block_bytes")
    return step(params, X, Y, alpha, allow, block_bytes=block_bytes)


def grad_rows(params, X, Y, hidden, output, loss):
    return network(params, hidden, output, loss).manual_grad(params, X, Y)


@pytest.mark.parametrize("output, loss", PAIRS)
@pytest.mark.parametrize("block_bytes", [80, fast.descent.BLOCK_BYTES])
def test_descend_rows_is_one_step_of_gradient_descent(output, loss, block_bytes):
    # 80 bytes: blocks of 2 float64 columns of 5 rows (3 of 3 in the output layer), and a
    # last, smaller block where they do not divide n_{l-1}
    net, params, X, Y = problem("tanh", output, loss, 3, jnp.float64)
    new, mean_loss, ok = descend(params, X, Y, 0.3, hidden="tanh", output=output, loss=loss,
                                 block_bytes=block_bytes)
    manual_loss, manual = grad_rows(params, X, Y, "tanh", output, loss)
    auto = jax.grad(net.loss)(params, X, Y)
    assert bool(ok)
    np.testing.assert_allclose(mean_loss, manual_loss, rtol=1e-15)
    for p, got, g, a in zip(jax.tree.leaves(params), jax.tree.leaves(new),
                            jax.tree.leaves(manual), jax.tree.leaves(auto), strict=True):
        np.testing.assert_allclose(got, p - 0.3 * g, rtol=1e-14, atol=1e-15)
        np.testing.assert_allclose(got, p - 0.3 * a, rtol=1e-12, atol=1e-13)


def test_descend_rows_applies_only_certainly_finite_steps():
    net, params, X, Y = problem("relu", "softmax", "softmax", 3, jnp.float32)
    def step(params, X, allow, Y=Y):
        return descend(params, X, Y, 0.1, hidden="relu", output="softmax", loss="softmax",
                       allow=allow, block_bytes=40)

    def same(a, b):
        return all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a),
                                                        jax.tree.leaves(b), strict=True))

    new, _, ok = step(params, X, True)
    assert bool(ok) and not same(new, params)
    new, _, ok = step(params, X, False)  # allow=False: as it was, bit for bit
    assert bool(ok) and same(new, params)
    bad_X = X.at[2, 1].set(jnp.nan)
    new, _, ok = step(params, bad_X, True)
    assert not bool(ok) and same(new, params)
    new, _, ok = step(params, bad_X, None)
    assert not bool(ok) and not all(bool(jnp.all(jnp.isfinite(p))) for p in jax.tree.leaves(new))
    # Δᵀ A finite (Σ_i 2 · 1e37 = 1.6e38 < 3.4e38), but its bound past a quarter of
    # float32's largest: refused, as a sum that could overflow
    W = [{"W": jnp.full((1, 2), 1e-37, jnp.float32), "b": jnp.zeros(1, jnp.float32)}]
    X_big = jnp.full((8, 2), 1e37, jnp.float32)  # z = δ = 2 for every example, y = 0
    names = {"hidden": "relu", "output": "identity", "loss": "squared_error"}
    Y_0 = jnp.zeros((8, 1), jnp.float32)
    new, loss, ok = descend(W, X_big, Y_0, 0.1, allow=True, **names)
    assert bool(jnp.isfinite(loss)) and not bool(ok) and same(new, W)
    _, grads = grad_rows(W, X_big, Y_0, *names.values())
    assert bool(jnp.all(jnp.isfinite(grads[0]["W"])))


def test_gradient_bound_bounds_every_entry():
    D = jax.random.normal(jax.random.key(0), (7, 3), jnp.float64)
    A = jax.random.normal(jax.random.key(1), (7, 4), jnp.float64)
    bound = fast.descent.gradient_bound(D, A)
    np.testing.assert_allclose(bound, 7 * np.abs(D).max() * np.abs(A).max(), rtol=1e-15)
    assert float(jnp.max(jnp.abs(D.T @ A))) <= float(bound)
    # reached when every row holds the largest |δ| and |a| with one sign
    D1, A1 = jnp.array([[2.0, -1.0]] * 3), jnp.array([[3.0, 1.0]] * 3)
    assert float(fast.descent.gradient_bound(D1, A1)) == float(jnp.max(jnp.abs(D1.T @ A1))) == 18
    assert not bool(fast.descent.gradient_bound(D.at[3, 0].set(jnp.nan), A) < 1e300)
    # one NaN among many: XLA's CPU max over a large array drops it, max_abs does not
    big = jnp.zeros((96, 2049), jnp.float32).at[40, 7].set(jnp.nan)
    assert float(jax.jit(gradcheck.max_abs)(big)) == float("inf")
    assert not bool(jax.jit(fast.descent.gradient_bound)(jnp.ones((96, 3)), big) < 1e30)
    assert not bool(fast.descent.gradient_bound(D, A.at[0, 0].set(jnp.inf)) < 1e300)
    assert not bool(fast.descent.gradient_bound(D.at[0, 0].set(jnp.inf), 0 * A) < 1e300)


def test_descend_weights_holds_one_block_of_the_gradient():
    # XLA's accounting with W donated: a 1 MiB ∂L/∂W computed 128 KiB at a time
    W = jnp.zeros((512, 512), jnp.float32)
    Delta = jax.random.normal(jax.random.key(0), (64, 512), jnp.float32)
    A = jax.random.normal(jax.random.key(1), (64, 512), jnp.float32)
    temp = {}
    for block in (W.nbytes, W.nbytes // 8):
        fn = jax.jit(lambda W, b=block: fast.descent.descend_weights(W, Delta, A, 0.1,
                                                                  jnp.bool_(True), b),
                     donate_argnums=0)
        temp[block] = fn.lower(W).compile().memory_analysis().temp_size_in_bytes
        np.testing.assert_allclose(fn(jnp.zeros_like(W)), -0.1 * (Delta.T @ A) / 64,
                                   rtol=1e-5, atol=1e-6)
    assert temp[W.nbytes] >= W.nbytes
    assert temp[W.nbytes // 8] < W.nbytes // 4
