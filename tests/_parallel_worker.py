"""Subprocess worker for tests/test_parallel.py: data-parallel training against ``sgd.train``.

Run in a fresh process, so that the device count and x64 are set before JAX starts:

    XLA_FLAGS=--xla_force_host_platform_device_count=8 JAX_ENABLE_X64=1 JAX_PLATFORMS=cpu \\
        python tests/_parallel_worker.py OUT.json

    # two processes x 2 devices over loopback (run both, I = 0 and 1):
    XLA_FLAGS=--xla_force_host_platform_device_count=2 JAX_ENABLE_X64=1 JAX_PLATFORMS=cpu \\
        python tests/_parallel_worker.py OUT.json --coordinator 127.0.0.1:PORT \\
        --num-processes 2 --process-id I [--die VICTIM]

For every case in CASES (or --cases), train with ``sgd.train`` on one device and with
``sgd.train(..., mesh=...)`` on every device of every process, from the same init, data
and key; process 0 writes OUT.json: the largest relative parameter difference, both
loss histories, the parameters' shardings, the compiled collectives, the compilations
after the first epoch (none expected) and the error a non-divisible batch size raises.

With ``--die VICTIM`` every process then trains on for many epochs and process VICTIM
kills itself (SIGKILL) after epoch 1; every other process must stop with an error, not
hang. The test reads their exit status and output.

A case is one line in CASES: name -> a function of a key returning a Case.
"""

import argparse
import json
import math
import os
import re
import signal
import sys
import time
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxnn import DenseNetwork, parallel, sgd
from jaxnn.cnn import CNN, Conv, MaxPool


def blobs(key, m: int, n_0: int, k: int):
    """m points in n_0 dimensions around k random centres; float64, labels (m,)."""
    k1, k2, k3 = jax.random.split(key, 3)
    y = jax.random.randint(k1, (m,), 0, k)
    centres = jax.random.normal(k2, (k, n_0), jnp.float64)
    return centres[y] + jax.random.normal(k3, (m, n_0), jnp.float64), y


class Case(NamedTuple):
    model: Any
    params: Any
    X: Any
    Y: Any
    batch_size: int
    source: str
    optimizer: Any = None
    model_axis: int = 1  # size of the "model" mesh axis
    min_shard_size: int = 2**16


def dense(source: str, optimizer=None, sizes=(6, 16, 16, 3), model_axis=1):
    def build(key):
        net = DenseNetwork(sizes, "tanh", "softmax", "softmax")
        k1, k2 = jax.random.split(key)
        X, Y = blobs(k2, 80, sizes[0], sizes[-1])
        return Case(net, net.init(k1, "xavier_normal", jnp.float64), X, Y, 16, source,
                    optimizer, model_axis, min_shard_size=64)
    return build


def cnn(source: str, optimizer=None):
    def build(key):
        net = CNN((8, 8, 2), (Conv(4, 3), MaxPool(2)), (8, 3), "relu", "softmax", "softmax")
        k1, k2, k3 = jax.random.split(key, 3)
        X = jax.random.normal(k2, (48, 8, 8, 2), jnp.float64)
        Y = jnp.argmax(X.reshape(48, -1) @ jax.random.normal(k3, (128, 3), jnp.float64), 1)
        return Case(net, net.init(k1, "he", jnp.float64), X, Y, 16, source, optimizer)
    return build


CASES = {
    "dense-manual": dense("manual"),
    "dense-autodiff": dense("autodiff"),
    "dense-manual-momentum": dense("manual", optax.sgd(0.05, momentum=0.9)),
    # W^[1], W^[2] and their momentum split by rows over a "model" axis of 2
    "dense-model-axis": dense("manual", optax.sgd(0.05, momentum=0.9), (6, 32, 32, 3), 2),
    # W^[2] (1024, 1025) is over 8 MiB: manual steps run as model.manual_descent, in place
    "dense-in-place": dense("manual", None, (6, 1025, 1024, 3)),
    "dense-in-place-model-axis": dense("manual", None, (6, 1025, 1024, 3), 2),
    "cnn-manual": cnn("manual"),
    "cnn-autodiff": cnn("autodiff"),
}
EPOCHS, ALPHA = 3, 0.1
COMPILES = []
jax.monitoring.register_event_duration_secs_listener(
    lambda event, *_, **__: COMPILES.append(event)
    if event == "/jax/core/compile/backend_compile_duration" else None)


def max_relative(a_tree, b_tree) -> float:
    """max over leaves of max|a - b| / max|a|."""
    return max(float(np.max(np.abs(a - b)) / np.max(np.abs(a)))
               for a, b in zip(jax.tree.leaves(a_tree), jax.tree.leaves(b_tree), strict=True))


def collectives(mesh, c: Case) -> tuple[list[str], int]:
    """Collective operations in the compiled sharded epoch, and the most elements one
    all-gather produces."""
    idx = np.asarray(sgd.batch_indices(jax.random.key(0), c.X.shape[0], c.batch_size))
    params = parallel.place(c.params, parallel.param_sharding(c.params, mesh, c.min_shard_size))
    state = sgd.init_state(c.params, c.optimizer)
    state = parallel.place(state, parallel.param_sharding(state, mesh, c.min_shard_size))
    fn = parallel._compiled_epoch(mesh, parallel._donate(), parallel._layout(params),
                                  parallel._layout(state))
    text = fn.lower(params, state, parallel.gather(np.asarray(c.X), idx, mesh),
                    parallel.gather(np.asarray(c.Y), idx, mesh),
                    parallel.replicate(np.asarray(ALPHA, np.float64), mesh), c.model, c.source,
                    c.optimizer, parallel.sharded(mesh), True).compile().as_text()
    pattern = r"\b(all-reduce|all-gather|reduce-scatter|all-to-all|collective-permute)\b"
    gathered = [math.prod(int(d) for d in dims.split(",") if d)
                for dims in re.findall(r"= \w+\[([\d,]*)\]\S* all-gather\(", text)]
    return sorted(set(re.findall(pattern, text))), max(gathered, default=0)


def equal(args) -> dict:
    out = {"devices": jax.device_count(), "processes": jax.process_count(), "cases": {}}
    for name in args.cases.split(","):
        c = CASES[name](jax.random.key(0))
        mesh = parallel.make_mesh(model=c.model_axis)
        kw = dict(key=jax.random.key(1), alpha=ALPHA, epochs=EPOCHS, batch_size=c.batch_size,
                  source=c.source, optimizer=c.optimizer)
        after_first_epoch = []

        def on_epoch(e, *_, seen=after_first_epoch):
            if e == 0:
                seen.append(len(COMPILES))

        t = time.perf_counter()
        p2, h2 = sgd.train(c.model, c.params, c.X, c.Y, mesh=mesh, on_epoch=on_epoch,
                           min_shard_size=c.min_shard_size, **kw)
        t2 = time.perf_counter() - t
        specs = [str(x.sharding.spec) for x in jax.tree.leaves(p2)]
        p2 = jax.tree.map(np.asarray, parallel.local_copy(p2))
        result = {"mesh": dict(mesh.shape), "param_specs": specs,
                  "compiles_after_first_epoch": len(COMPILES) - after_first_epoch[0],
                  "seconds_parallel": t2}
        result["collectives"], result["largest_all_gather"] = collectives(mesh, c)
        if name == "dense-manual":
            try:
                sgd.train(c.model, c.params, c.X, c.Y, mesh=mesh,
                          **{**kw, "batch_size": mesh.shape["data"] + 1})
                out["non_divisible_error"] = None
            except ValueError as e:
                out["non_divisible_error"] = str(e)
        # last: on GPU/TPU sgd.train donates (deletes) the params it is given
        t = time.perf_counter()
        p1, h1 = sgd.train(c.model, c.params, c.X, c.Y, **kw)
        out["cases"][name] = {
            **result, "seconds_single": time.perf_counter() - t,
            "max_relative_difference": max_relative(jax.tree.map(np.asarray, p1), p2),
            "loss_single": h1["loss"], "loss_parallel": h2["loss"],
            "accuracy_single": h1["accuracy"], "accuracy_parallel": h2["accuracy"],
        }
    return out


def die(victim: int) -> None:
    c = CASES["dense-manual"](jax.random.key(0))  # compiled already: starts at once

    def on_epoch(e, *_):
        print(f"process {jax.process_index()}: epoch {e} done", file=sys.stderr, flush=True)
        if jax.process_index() == victim and e == 1:
            os.kill(os.getpid(), signal.SIGKILL)

    sgd.train(c.model, c.params, c.X, c.Y, key=jax.random.key(1), alpha=ALPHA,
              epochs=10_000, batch_size=c.batch_size, source=c.source, on_epoch=on_epoch,
              mesh=parallel.make_mesh())


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("out")
    p.add_argument("--coordinator")
    p.add_argument("--num-processes", type=int, default=1)
    p.add_argument("--process-id", type=int, default=0)
    p.add_argument("--cases", default=",".join(CASES),
                   help="comma-separated CASES names; empty: none (with --die: only that)")
    p.add_argument("--die", type=int, default=None, metavar="VICTIM")
    p.add_argument("--heartbeat-timeout", type=int, default=10)
    args = p.parse_args()
    if args.num_processes > 1:
        parallel.initialize(args.coordinator, args.num_processes, args.process_id,
                            initialization_timeout=60,
                            heartbeat_timeout_seconds=args.heartbeat_timeout,
                            shutdown_timeout_seconds=10)
    with parallel.exit_on_error():
        if not jax.config.jax_enable_x64:
            raise SystemExit("run with JAX_ENABLE_X64=1")
        out = equal(args) if args.cases else {}
        if parallel.is_main_process():
            with open(args.out, "w") as f:
                json.dump(out, f, indent=1)
        if args.die is not None:
            die(args.die)


if __name__ == "__main__":
    main()
