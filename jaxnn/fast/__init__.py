"""Speed, apart from the reference equations: drop-in replacements, each tested equal.

- ``batched`` (``forms.py``): the batched form of a layer (matrix products over the whole minibatch,
  im2col or ``lax.conv`` convolutions) for the network's forward loop and δ recursion;
- ``manual_grad``: the network's hand-written batch gradient through those forms;
- ``descent``: gradient descent of a dense network with every W^[l] updated in place;
- ``conv``: batched convolution and pooling (sliding window, im2col, ``lax``) and their
  hand-written backward passes.

The public models train with these by default; ``jaxnn.network.Network.manual_grad``
and the layers of ``jaxnn.layers`` are the references they are tested against.
"""

import jax

from jaxnn import losses, network
from jaxnn.fast import conv, descent
from jaxnn.fast.forms import Vmapped, batched, delta_t_a


def manual_grad(batched_layers, output: str, loss: str, params: list, X, Y):
    """(mean loss, gradient of the mean loss) by the δ recursion over batched layers.

    X: (m, ...) examples as rows; Y: (m, n_N) or (m,) labels. The same numbers as
    ``jax.vmap`` of ``Network.grad_example`` and a mean, up to rounding.
    """
    Z, caches = network.forward(batched_layers, params, X)
    Delta_N = losses.delta_output_rows(output, loss, Z, Y)
    grads, _ = network.backward(batched_layers, params, caches, Delta_N)
    m = Z.shape[0]
    return losses.mean_output_loss(output, loss, Z, Y), jax.tree.map(lambda g: g / m, grads)


__all__ = ["Vmapped", "batched", "conv", "delta_t_a", "descent", "manual_grad"]
