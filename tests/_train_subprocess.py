"""A small training run with a checkpoint after every epoch, for the kill-and-resume test.

    python tests/_train_subprocess.py FOLDER OUT [--epochs N] [--sleep SECONDS]

Trains a (2, 16, 3) tanh/softmax network in float64 with optax momentum SGD through
``jaxnn.checkpoint.train``, resuming from FOLDER's newest valid checkpoint if there is
one, sleeping ``--sleep`` seconds after each epoch so that a kill lands mid-run. Prints
one line per event and per epoch, and at the end writes the final parameters and the
loss history to OUT with ``np.savez`` (no pickles).
"""

import argparse
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

jax.config.update("jax_enable_x64", True)

from jaxnn import DenseNetwork, checkpoint  # noqa: E402

SETTINGS = {"alpha": 0.1, "batch_size": 16, "source": "manual"}
OPTIMIZER = optax.sgd(0.05, momentum=0.9)  # one object: jit caches the epoch per optimizer


def problem():
    """(net, params, X, y, key, optimizer): three Gaussian blobs in 2-D, float64."""
    k_labels, k_points, k_init, k_train = jax.random.split(jax.random.key(11), 4)
    y = jax.random.randint(k_labels, (120,), 0, 3)
    centres = jnp.array([[2.0, 0.0], [-2.0, 1.5], [0.0, -2.0]], jnp.float64)
    X = centres[y] + 0.8 * jax.random.normal(k_points, (120, 2), jnp.float64)
    net = DenseNetwork((2, 16, 3), "tanh", "softmax", "softmax")
    params = net.init(k_init, "xavier_normal", jnp.float64)
    return net, params, X, y, k_train, OPTIMIZER


def main(argv=None) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("folder")
    p.add_argument("out")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--sleep", type=float, default=0.0)
    args = p.parse_args(argv)
    net, params, X, y, key, optimizer = problem()

    def on_epoch(epoch, params, opt_state, history):
        print(f"epoch {epoch} loss {history['loss'][-1]!r}", flush=True)
        time.sleep(args.sleep)

    params, history = checkpoint.train(
        net, params, X, y, folder=args.folder, key=key, epochs=args.epochs, keep=3,
        optimizer=optimizer, on_epoch=on_epoch, log=lambda line: print(line, flush=True),
        **SETTINGS)
    leaves = {f"leaf_{i}": np.asarray(leaf) for i, leaf in enumerate(jax.tree.leaves(params))}
    np.savez(args.out, loss=np.asarray(history["loss"]), **leaves)
    print("done", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
