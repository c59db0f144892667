import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxnn import activations

Z = jnp.linspace(-6.0, 6.0, 101, dtype=jnp.float64)


@pytest.mark.parametrize("name", ["identity", "sigmoid", "relu", "tanh"])
def test_g_prime_matches_autodiff_and_closed_form(name):
    act = activations.get(name)
    z = Z[Z != 0]
    auto = jax.vmap(jax.grad(act.g))(z)
    np.testing.assert_allclose(act.g_prime(z), auto, rtol=1e-14, atol=1e-15)


def test_values_against_numpy():
    z = np.asarray(Z)
    np.testing.assert_allclose(activations.sigmoid(Z), 1 / (1 + np.exp(-z)), rtol=1e-14)
    np.testing.assert_allclose(activations.relu(Z), np.maximum(z, 0))
    e, f = np.exp(z), np.exp(-z)
    np.testing.assert_allclose(activations.tanh(Z), (e - f) / (e + f), rtol=1e-13, atol=1e-15)
    # s (1 - s) loses digits to cancellation where s is near 1: about 1e-11 at z = -6
    np.testing.assert_allclose(activations.sigmoid_prime(Z),
                               np.exp(-z) / (1 + np.exp(-z)) ** 2, rtol=1e-10)
    np.testing.assert_allclose(activations.tanh_prime(Z), 1 - np.tanh(z) ** 2, rtol=1e-10)


def test_relu_prime_at_zero_is_zero_like_jax_nn_relu():
    assert activations.relu_prime(jnp.array(0.0)) == 0.0
    assert jax.grad(jax.nn.relu)(0.0) == 0.0
    assert activations.relu_prime(jnp.array(1e-300)) == 1.0


def test_softmax_stable_and_matches_definition():
    z = jnp.array([1.0, 2.0, 3.0], jnp.float64)
    e = np.exp([1.0, 2.0, 3.0])
    np.testing.assert_allclose(activations.softmax(z), e / e.sum(), rtol=1e-15)
    big = jnp.array([1e4, 0.0, -1e4], jnp.float32)
    s = activations.softmax(big)
    assert s.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(s)))
    np.testing.assert_allclose(s, [1.0, 0.0, 0.0])


def test_softmax_jvp_equals_jacobian_product():
    z = jax.random.normal(jax.random.key(0), (5,), jnp.float64)
    v = jax.random.normal(jax.random.key(1), (5,), jnp.float64)
    J = jax.jacobian(activations.softmax)(z)
    s = np.asarray(activations.softmax(z))
    np.testing.assert_allclose(J, np.diag(s) - np.outer(s, s), atol=1e-15)
    np.testing.assert_allclose(activations.softmax_jvp(z, v), J.T @ v, rtol=1e-13)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
@pytest.mark.parametrize("name", ["identity", "sigmoid", "relu", "tanh", "softmax"])
def test_dtype_preserved(name, dtype):
    act = activations.get(name)
    z = jnp.ones((3,), dtype)
    assert act.g(z).dtype == dtype
    if act.g_prime is not None:
        assert act.g_prime(z).dtype == dtype


def test_unknown_name_lists_known():
    with pytest.raises(ValueError, match="unknown activation 'swish'.*relu"):
        activations.get("swish")
