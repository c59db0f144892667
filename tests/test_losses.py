import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxnn import losses

from .helpers import PAIRS, targets


def test_values_by_hand():
    y_hat = jnp.array([0.7, 0.2], jnp.float64)
    y = jnp.array([1.0, 0.0], jnp.float64)
    assert np.isclose(losses.squared_error(y_hat, y), 0.5 * (0.3**2 + 0.2**2))
    assert np.isclose(losses.logistic(y_hat, y), -(np.log(0.7) + np.log(0.8)))
    p = jnp.array([0.5, 0.3, 0.2], jnp.float64)
    assert np.isclose(losses.softmax_loss(p, 1), -np.log(0.3))
    q = jnp.array([0.1, 0.6, 0.3], jnp.float64)
    assert np.isclose(losses.cross_entropy(p, q), -(0.1 * np.log(0.5) + 0.6 * np.log(0.3)
                                                    + 0.3 * np.log(0.2)))


def test_logistic_sign_erratum_fixed():
    # the notes' -(y log ŷ - (1-y) log(1-ŷ)) would not be minimised at ŷ = y
    y = jnp.array([0.0])
    assert losses.logistic(jnp.array([0.01]), y) < losses.logistic(jnp.array([0.5]), y)


@pytest.mark.parametrize("output, loss", PAIRS)
def test_stable_form_equals_probability_form(output, loss):
    z = jax.random.normal(jax.random.key(0), (3,), jnp.float64)
    y = targets(jax.random.key(1), output, loss, 1, 3, jnp.float64)[0]
    probability_form = losses.get(loss).L(jax.nn.softmax(z) if output == "softmax"
                                          else jax.nn.sigmoid(z) if output == "sigmoid" else z, y)
    np.testing.assert_allclose(losses.output_loss(output, loss, z, y), probability_form,
                               rtol=1e-13)


@pytest.mark.parametrize("output, loss", PAIRS)
def test_delta_output_general_equals_simplified_and_autodiff(output, loss):
    z = jax.random.normal(jax.random.key(2), (3,), jnp.float64)
    y = targets(jax.random.key(3), output, loss, 1, 3, jnp.float64)[0]
    general = losses.delta_output_general(output, loss, z, y)
    simplified = losses.delta_output(output, loss, z, y)
    auto = jax.grad(losses.output_loss, argnums=2)(output, loss, z, y)
    np.testing.assert_allclose(general, auto, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(simplified, auto, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("output, loss", PAIRS)
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_delta_output_rows_equals_per_example(output, loss, dtype):
    Z = 3 * jax.random.normal(jax.random.key(4), (7, 5), dtype)
    Y = targets(jax.random.key(5), output, loss, 7, 5, dtype)
    rows = losses.delta_output_rows(output, loss, Z, Y)
    per_example = jax.vmap(losses.delta_output, in_axes=(None, None, 0, 0))(output, loss, Z, Y)
    assert rows.shape == (7, 5) and rows.dtype == dtype
    np.testing.assert_array_equal(rows, per_example)  # ŷ - 1 at the label, exactly
    auto = jax.vmap(jax.grad(losses.output_loss, argnums=2), in_axes=(None, None, 0, 0))(
        output, loss, Z, Y)
    np.testing.assert_allclose(rows, auto, rtol=1e-5 if dtype == jnp.float32 else 1e-12,
                               atol=1e-6 if dtype == jnp.float32 else 1e-15)


def test_delta_output_rows_rejects_bad_batches():
    Z = jnp.zeros((4, 3))
    with pytest.raises(ValueError, match=r"\(m, k\)"):
        losses.delta_output_rows("softmax", "softmax", Z[0], jnp.array(1))
    with pytest.raises(ValueError, match="labels must lie in"):
        losses.delta_output_rows("softmax", "softmax", Z, jnp.array([0, 1, 2, 3]))
    with pytest.raises(ValueError, match="shape"):
        losses.delta_output_rows("softmax", "softmax", Z, jnp.array([0, 1]))
    with pytest.raises(TypeError, match="integer"):
        losses.delta_output_rows("softmax", "softmax", Z, Z[:, 0])


def test_canonical_delta_is_y_hat_minus_y():
    z = jnp.array([0.3, -1.0, 2.0], jnp.float64)
    s = jax.nn.softmax(z)
    np.testing.assert_allclose(losses.delta_output("softmax", "softmax", z, 2),
                               s - jnp.array([0, 0, 1.0]), atol=1e-16)
    np.testing.assert_allclose(losses.delta_output("identity", "squared_error", z, z + 1), -1.0)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_from_logits_finite_for_huge_logits(dtype):
    z = jnp.array([1e4, -1e4, 0.0], dtype)
    for loss, y in [("softmax", 1), ("cross_entropy", jnp.array([0.0, 1.0, 0.0], dtype))]:
        value = losses.output_loss("softmax", loss, z, y)
        grad = jax.grad(losses.output_loss, argnums=2)("softmax", loss, z, y)
        assert value.dtype == dtype and np.isclose(float(value), 2e4, rtol=1e-6)
        assert bool(jnp.all(jnp.isfinite(grad)))
        assert bool(jnp.all(jnp.isfinite(losses.delta_output("softmax", loss, z, y))))
    y = jnp.array([0.0, 1.0, 1.0], dtype)
    value = losses.output_loss("sigmoid", "logistic", z, y)
    assert np.isclose(float(value), 2e4 + np.log(2), rtol=1e-6)


def test_batch_loss_is_mean():
    Y_hat = jnp.array([[0.0], [2.0]], jnp.float64)
    Y = jnp.zeros((2, 1), jnp.float64)
    assert float(losses.batch_loss("squared_error", Y_hat, Y)) == 1.0


def test_bad_targets():
    Y_hat = jnp.zeros((4, 1))
    with pytest.raises(ValueError, match=r"shape \(4, 1\).*got shape \(4,\)"):
        losses.batch_loss("squared_error", Y_hat, jnp.zeros((4,)))
    P = jnp.full((4, 3), 1 / 3)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\)"):
        losses.batch_loss("softmax", P, jnp.array([0, 1, 2, 3]))
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\)"):
        losses.batch_loss("softmax", P, jnp.array([0, -1, 2, 1]))
    with pytest.raises(TypeError, match="integer labels"):
        losses.batch_loss("softmax", P, jnp.zeros((4,)))
    with pytest.raises(TypeError, match="floating targets"):
        losses.batch_loss("cross_entropy", P, jnp.zeros((4, 3), jnp.int32))
    with pytest.raises(ValueError, match="unknown loss 'hinge'"):
        losses.get("hinge")
    with pytest.raises(ValueError, match="needs an output activation"):
        losses.check_pair("identity", "logistic")
    with pytest.raises(ValueError, match="output activation must be"):
        losses.check_pair("relu", "squared_error")


@pytest.mark.parametrize("output, loss", PAIRS)
def test_mean_output_loss_is_the_mean_of_the_examples_losses(output, loss):
    k = 3 if output == "softmax" else 2
    Z = 3.0 * jax.random.normal(jax.random.key(0), (5, k), jnp.float64)
    Y = targets(jax.random.key(1), output, loss, 5, k, jnp.float64)
    per_example = [losses.output_loss(output, loss, Z[i], Y[i]) for i in range(5)]
    np.testing.assert_allclose(losses.mean_output_loss(output, loss, Z, Y),
                               sum(per_example) / 5, rtol=1e-14)
