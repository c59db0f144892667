import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxnn import DenseNetwork, dense

from .helpers import problem


def plain_loop_forward(params, X, hidden, output):
    """Independent reference: numpy, one example and one unit at a time."""
    g = {"relu": lambda z: max(z, 0.0), "tanh": np.tanh,
         "sigmoid": lambda z: 1 / (1 + np.exp(-z)), "identity": lambda z: z}
    out = []
    for x in np.asarray(X):
        a = x
        for l, p in enumerate(params, start=1):
            W, b = np.asarray(p["W"]), np.asarray(p["b"])
            z = np.array([sum(W[j, i] * a[i] for i in range(len(a))) + b[j]
                          for j in range(len(b))])
            if l < len(params):
                a = np.array([g[hidden](v) for v in z])
            elif output == "softmax":
                a = np.exp(z - z.max()) / np.exp(z - z.max()).sum()
            else:
                a = np.array([g[output](v) for v in z])
        out.append(a)
    return np.array(out)


@pytest.mark.parametrize("hidden", ["relu", "tanh", "sigmoid"])
@pytest.mark.parametrize("output, loss", [("identity", "squared_error"),
                                          ("sigmoid", "logistic"), ("softmax", "softmax")])
@pytest.mark.parametrize("depth", [1, 3])
def test_three_forms_and_loop_agree(hidden, output, loss, depth):
    net, params, X, _ = problem(hidden, output, loss, depth)
    one = jnp.stack([dense.forward(params, x, hidden, output) for x in X])
    vmapped = dense.forward_batch(params, X, hidden, output)
    matrix = dense.forward_matrix(params, X.T, hidden, output).T
    reference = plain_loop_forward(params, X, hidden, output)
    np.testing.assert_allclose(one, reference, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(vmapped, reference, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(matrix, reference, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(net.predict(params, X), reference, rtol=1e-12, atol=1e-14)


def test_notes_4_3_1_network_shapes_and_cache():
    params = dense.init(jax.random.key(0), (4, 3, 1))
    x = jnp.ones((4,), jnp.float32)
    zs, a_s = dense.forward_cache(params, x, "relu", "identity")
    assert [z.shape for z in zs] == [(3,), (1,)]
    assert [a.shape for a in a_s] == [(4,), (3,), (1,)]
    np.testing.assert_allclose(zs[0], params[0]["W"] @ x + params[0]["b"], rtol=1e-6)
    np.testing.assert_allclose(zs[1], params[1]["W"] @ a_s[1] + params[1]["b"], rtol=1e-6)


def test_single_relu_neuron_is_max_ax_plus_b():
    params = [{"W": jnp.array([[2.0]]), "b": jnp.array([-3.0])}]
    x = jnp.array([[0.5], [1.0], [4.0]])
    np.testing.assert_allclose(
        dense.forward_batch([dict(p) for p in params], x, "relu", "identity"),
        np.array([[-2.0], [-1.0], [5.0]]))
    relu_out = jax.nn.relu(dense.forward_batch(params, x, "relu", "identity"))
    np.testing.assert_allclose(relu_out, np.maximum(2 * np.array([[0.5], [1.0], [4.0]]) - 3, 0))


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_dtype_follows_inputs(dtype):
    net, params, X, _ = problem("tanh", "softmax", "softmax", 3, dtype)
    assert net.predict(params, X).dtype == dtype
    assert dense.forward_matrix(params, X.T, "tanh", "softmax").dtype == dtype


def test_bad_input():
    net = DenseNetwork((4, 3, 2), "relu", "softmax", "softmax")
    params = net.init(jax.random.key(0))
    with pytest.raises(ValueError, match=r"expected input of shape \(m, 4\), got shape \(4,\)"):
        net.check(params, jnp.ones((4,), jnp.float32))
    with pytest.raises(ValueError, match=r"expected input of shape \(m, 4\), got shape \(2, 5\)"):
        net.check(params, jnp.ones((2, 5), jnp.float32))
    with pytest.raises(TypeError, match="no silent promotion"):
        net.check(params, jnp.ones((2, 4), jnp.float64))
    with pytest.raises(
            ValueError, match=r"params\[2\]\['W'\]: expected shape \(2, 2\), got \(2, 3\)"):
        one = jnp.ones((2, 3), jnp.float32)
        dense.check_params([params[0], {"W": one, "b": one[:, 0]}, {"W": one, "b": one[:, 0]}])
    with pytest.raises(TypeError, match="mixed parameter dtypes"):
        dense.check_params([params[0], {"W": jnp.ones((2, 3)), "b": jnp.ones(2)}])
    with pytest.raises(
            ValueError, match=r"params\[0\]\['b'\]: expected shape \(2,\), got \(2, 1\)"):
        dense.check_params([{"W": jnp.ones((2, 3)), "b": jnp.ones((2, 1))}])
    with pytest.raises(ValueError, match="hidden activation must be"):
        DenseNetwork((4, 2), "softmax")
    with pytest.raises(ValueError, match="unknown activation"):
        DenseNetwork((4, 2), "relu", "linear")
    with pytest.raises(
            ValueError, match=r"params\[0\]\['W'\]: expected shape \(5, 4\), got \(3, 4\)"):
        DenseNetwork((4, 5, 2), "relu", "softmax", "softmax").check(
            params, jnp.ones((2, 4), jnp.float32))
