"""Data-parallel training of a dense network on the digits, over many devices and processes.

Question: does training on D devices spread over P processes (each process reading only
its own devices' share of every minibatch) give the parameters one device gives?

Expected: yes, to rounding: the gradient of a minibatch is the mean over its examples,
each device sums its share and XLA's all-reduce adds the shares, so only the order of
the additions differs. With --compare, every process also runs ``sgd.train`` on one
device and the largest relative parameter difference is reported: about 1e-15 in
float64, about 1e-6 in float32 after a few epochs. Test accuracy about 0.97.

One process, 8 virtual CPU devices:

    python -m experiments.distributed_train --cpu-devices 8 --compare

Two processes on one machine, 2 CPU devices each, talking over loopback only (start
both; process 0 hosts the coordinator and writes the results):

    python -m experiments.distributed_train --coordinator 127.0.0.1:12355 \\
        --num-processes 2 --process-id 0 --cpu-devices 2 --compare &
    python -m experiments.distributed_train --coordinator 127.0.0.1:12355 \\
        --num-processes 2 --process-id 1 --cpu-devices 2 --compare

Process 0 writes runs/distributed_train/<run>/results.json (configuration, environment,
mesh, losses, accuracies, timings) and checkpoints/checkpoint_<step>.npz
(``jaxnn.checkpoint``: parameters, optimiser state, key, history) after the last epoch
and every --checkpoint-every epochs; the other processes write nothing.

On several machines give process 0's reachable address as --coordinator on every
machine, or set JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID; under
Slurm, Open MPI or on TPU pods JAX finds them itself. Every process must get the same
options. If a process dies, the others stop with an error (within
--heartbeat-timeout seconds) instead of waiting forever.
"""

import numpy as np

from experiments import common


def parse(argv):
    p = common.parser("distributed_train", __doc__, (
        "checkpoints/checkpoint_<step>.npz (the training state after the last epoch and every "
        "--checkpoint-every epochs; process 0 only)",))
    common.add_training_args(p, epochs=30, alpha=0.1, batch_size=64)
    p.set_defaults(source="manual")
    p.add_argument("--hidden-sizes", default="64,32",
                   help="comma-separated hidden layer widths")
    p.add_argument("--hidden", choices=("relu", "tanh", "sigmoid"), default="relu",
                   help="activation g of the hidden layers")
    p.add_argument("--compare", action="store_true",
                   help="also train on one device with sgd.train and report the difference")
    p.add_argument("--checkpoint-every", type=common.count(0), default=0,
                   help="epochs between checkpoints (0: only after the last epoch)")
    g = p.add_argument_group("many processes (default: one process, no coordinator)")
    g.add_argument("--coordinator", default=None,
                   help="HOST:PORT of process 0 (default: $JAX_COORDINATOR_ADDRESS)")
    g.add_argument("--num-processes", type=common.count(1), default=None,
                   help="number of processes (default: $JAX_NUM_PROCESSES)")
    g.add_argument("--process-id", type=common.count(0), default=None,
                   help="this process's id, 0 .. N-1 (default: $JAX_PROCESS_ID)")
    g.add_argument("--cpu-devices", type=common.count(1), default=None,
                   help="virtual CPU devices per process (CPU backend only)")
    g.add_argument("--init-timeout", type=common.count(1), default=120,
                   help="seconds to wait for every process to join")
    g.add_argument("--heartbeat-timeout", type=common.count(1), default=30,
                   help="seconds of silence after which a process counts as dead")
    args = p.parse_args(argv)
    if args.source == "both":
        p.error("--source: choose manual or autodiff (one run per launch)")
    try:
        args.hidden_sizes = ",".join(str(int(n)) for n in args.hidden_sizes.split(",") if n)
    except ValueError:
        p.error(f"--hidden-sizes must be integers separated by commas, got {args.hidden_sizes!r}")
    if any(int(n) < 1 for n in args.hidden_sizes.split(",") if n):
        p.error(f"--hidden-sizes must be >= 1, got {args.hidden_sizes!r}")
    return args


def distributed(args) -> bool:
    import os

    return (args.coordinator is not None or (args.num_processes or 1) > 1
            or "JAX_COORDINATOR_ADDRESS" in os.environ)


def main(argv=None) -> dict:
    args = parse(argv)
    import jax

    if args.cpu_devices is not None:
        jax.config.update("jax_num_cpu_devices", args.cpu_devices)
    from jaxnn import parallel

    if distributed(args):
        parallel.initialize(args.coordinator, args.num_processes, args.process_id,
                            initialization_timeout=args.init_timeout,
                            heartbeat_timeout_seconds=args.heartbeat_timeout)
    with parallel.exit_on_error():
        return train(args, argv)


def train(args, argv=None) -> dict:
    import jax
    import jax.numpy as jnp

    from jaxnn import DenseNetwork, checkpoint, data, parallel, sgd

    common.setup(args)
    main_process = parallel.is_main_process()
    if args.smoke:
        args.epochs = 2
    split = data.digits(seed=args.seed, dtype=common.dtype_of(args))
    hidden = tuple(int(n) for n in args.hidden_sizes.split(",") if n)
    net = DenseNetwork((64, *hidden, 10), args.hidden, "softmax", "softmax")
    key_init, key_train = jax.random.split(jax.random.key(args.seed))
    params = net.init(key_init, "he", common.dtype_of(args))
    parallel.assert_same_everywhere(
        {"params": params, "config": np.array([args.seed, args.epochs, args.batch_size]),
         "alpha": np.float64(args.alpha)}, "configuration or initial parameters")
    devices = None if args.device is None else jax.devices(args.device)
    mesh = parallel.make_mesh(devices)
    if args.batch_size > len(split.y_train):
        raise common.UsageError(f"--batch-size must be <= the {len(split.y_train)} training "
                                f"examples, got {args.batch_size}")
    run = common.Run(args, "distributed_train", argv) if main_process else None
    folder = None if run is None else run.folder

    n_batches = split.X_train.shape[0] // args.batch_size

    def save_checkpoint(e, params, opt_state, history):
        # every process takes part (a parameter split over processes is all-gathered);
        # only process 0 writes
        state = parallel.local_copy((params, opt_state))
        if main_process:
            checkpoint.save(folder / "checkpoints", checkpoint.TrainState(
                *jax.device_get(state), key=key_train, epoch=e + 1, step=(e + 1) * n_batches,
                history=history, config={"experiment": "distributed_train", **vars(args)}))

    def on_epoch(e, params, opt_state, history):
        if main_process:
            print(f"epoch {e + 1}/{args.epochs}: loss {history['loss'][-1]:.4f}, "
                  f"train accuracy {history['accuracy'][-1]:.4f}", flush=True)
        last = e + 1 == args.epochs
        if last or (args.checkpoint_every > 0 and (e + 1) % args.checkpoint_every == 0):
            save_checkpoint(e, params, opt_state, history)

    kw = dict(key=key_train, alpha=args.alpha, epochs=args.epochs,
              batch_size=args.batch_size, source=args.source)
    with common.Timer() as t:
        params_p, history = sgd.train(net, params, split.X_train, split.y_train, mesh=mesh,
                                      on_epoch=on_epoch, **kw)
    params_p = parallel.local_copy(params_p)
    summary = {
        "processes": jax.process_count(), "devices": mesh.devices.size,
        "local_devices": jax.local_device_count(), "mesh": dict(mesh.shape),
        "examples_per_device": args.batch_size // mesh.shape[parallel.DATA],
        "train_seconds": t.seconds, "loss": history["loss"],
        "train_accuracy": history["accuracy"],
        "test_accuracy": float(jax.jit(net.accuracy)(params_p, split.X_test, split.y_test)),
        "majority_baseline": data.majority_baseline(split.y_train, split.y_test),
    }
    if args.compare:
        with common.Timer() as t1:
            params_1, _ = sgd.train(net, params, jnp.asarray(split.X_train), split.y_train, **kw)
        summary["single_device_seconds"] = t1.seconds
        summary["max_relative_difference"] = max(
            float(np.max(np.abs(a - b)) / np.max(np.abs(a)))
            for a, b in zip(jax.tree.leaves(jax.device_get(params_1)),
                            jax.tree.leaves(jax.device_get(params_p)), strict=True))
    if main_process:
        run.finish({"summary": summary})
        print(common.table([{k: v for k, v in summary.items()
                             if not isinstance(v, (list, dict))}]))
        print(f"results: {folder}")
    return {"folder": None if folder is None else str(folder), "summary": summary}


if __name__ == "__main__":
    import sys

    sys.exit(common.run(main))
