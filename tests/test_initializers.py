import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxnn import dense, initializers

KEY = jax.random.key(0)


@pytest.mark.parametrize(
    "method, std",
    [
        ("normal", 0.1),
        ("xavier_normal", (2 / (300 + 200)) ** 0.5),
        ("xavier_uniform", (6 / (300 + 200)) ** 0.5 / 3**0.5),
        ("he", (2 / 300) ** 0.5),
    ],
)
def test_standard_deviation(method, std):
    W = initializers.get(method)(KEY, (200, 300), jnp.float64)
    assert W.shape == (200, 300) and W.dtype == jnp.float64
    assert abs(float(jnp.std(W)) - std) < 0.02 * std
    assert abs(float(jnp.mean(W))) < 0.02 * std


def test_xavier_uniform_bound_and_conv_fans():
    W = initializers.xavier_uniform(KEY, (3, 3, 4, 8), jnp.float64)
    r = (6 / (36 + 72)) ** 0.5
    assert float(jnp.max(jnp.abs(W))) <= r
    assert initializers.fans((3, 3, 4, 8)) == (36, 72)


def test_init_shapes_and_zero_bias():
    params = dense.init(KEY, (4, 3, 1), "normal")
    assert [p["W"].shape for p in params] == [(3, 4), (1, 3)]
    assert [p["b"].shape for p in params] == [(3,), (1,)]
    assert all(p["W"].dtype == jnp.float32 for p in params)
    np.testing.assert_array_equal(params[0]["b"], 0)
    zeros = dense.init(KEY, (4, 3, 1), "zeros")
    assert all(float(jnp.abs(p["W"]).max()) == 0 for p in zeros)


def test_same_key_same_params_different_key_different():
    a = dense.init(KEY, (4, 3, 1))
    b = dense.init(KEY, (4, 3, 1))
    c = dense.init(jax.random.key(1), (4, 3, 1))
    np.testing.assert_array_equal(a[0]["W"], b[0]["W"])
    assert not np.array_equal(a[0]["W"], c[0]["W"])


def test_bad_input():
    with pytest.raises(ValueError, match="unknown initializer 'ones'"):
        dense.init(KEY, (4, 1), "ones")
    with pytest.raises(ValueError, match="sizes must be"):
        dense.init(KEY, (4,))
    with pytest.raises(ValueError, match="sizes must be"):
        dense.init(KEY, (4, 0, 1))
    with pytest.raises(TypeError, match="jax.random key"):
        dense.init(0, (4, 1))
    with pytest.raises(ValueError, match="kernel shape"):
        initializers.fans((3, 4, 5))
