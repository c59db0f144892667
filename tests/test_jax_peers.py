"""The benchmark's Flax and Equinox steps compute the workload's own loss and SGD step.

Each peer runs only where its library imports (neither is a dependency: ``pip install
flax equinox``); then its starting loss and the loss after one of its steps must equal
jaxnn's loss and the loss after one autodiff step of jaxnn, in float64.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import benchmark, jax_peers
from jaxnn import sgd


@pytest.mark.parametrize("name", ["mlp_small", "cnn_small"])
@pytest.mark.parametrize("peer", jax_peers.PEERS)
def test_peer_step_is_the_workloads_sgd_step(peer, name):
    pytest.importorskip(peer)
    w = benchmark.workload(name, smoke=True)
    model, params, X, Y = benchmark.build(w, jnp.float64, seed=3)
    alpha = 0.1
    call, start, seconds = jax_peers.STEPS[peer](w, params, X, Y, alpha)
    assert seconds > 0
    np.testing.assert_allclose(start, model.loss(params, X, Y), rtol=1e-13)
    _, loss_0 = call()
    _, loss_1 = call()  # the loss at the parameters after one step
    loss, grads = jax.value_and_grad(model.loss)(params, X, Y)
    after = sgd.update(params, grads, alpha)
    np.testing.assert_allclose(loss_0, loss, rtol=1e-13)
    np.testing.assert_allclose(loss_1, model.loss(after, X, Y), rtol=1e-11)
    assert abs(float(loss_1) - float(loss_0)) > 1e-6  # the step moved the parameters


def test_available_lists_the_importable_peers(monkeypatch):
    found = {"flax": object(), "equinox": None}
    monkeypatch.setattr(jax_peers.importlib.util, "find_spec", lambda name: found[name])
    assert jax_peers.available() == ["flax"]
