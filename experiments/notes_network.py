"""The notes' 4-3-1 network: train it with explicit SGD, compare manual and autodiff gradients.

Question: does the hand-written δ recursion give the same gradient as jax.grad and as
central finite differences, at initialisation and after training?

Expected: manual vs autodiff agree to ~1e-15 relative in float64 (two analytic
computations of one quantity) and to ~1e-6 in float32; finite differences agree to
~1e-7 in float64 (their own truncation and rounding), with ReLU kinks reported apart.
"""

import jax
import jax.numpy as jnp
import numpy as np

from experiments import common


def make_data(key, m: int, dtype):
    """A smooth regression target on 4 inputs: y = sin(x_1) + x_2 x_3 - 0.5 x_4, shape (m, 1)."""
    X = jax.random.uniform(key, (m, 4), dtype, -1.0, 1.0)
    y = jnp.sin(X[:, 0]) + X[:, 1] * X[:, 2] - 0.5 * X[:, 3]
    return X, y[:, None]


def gradient_rows(net, params, X, Y, stage: str, dtype_name: str):
    from jaxnn import gradcheck

    with jax.default_matmul_precision("highest"):
        report = gradcheck.check(net, params, X, Y)
    return report, [
        {"stage": stage, "dtype": dtype_name, "leaf": leaf,
         "manual/autodiff": report.manual_vs_autodiff[leaf],
         # with every checked coordinate on a kink there is no quotient to compare
         "fd/autodiff": ("none: all on a kink" if report.kinks[leaf] == report.checked[leaf]
                         else report.fd_vs_autodiff[leaf]),
         "kinks": f"{report.kinks[leaf]} of {report.checked[leaf]}"}
        for leaf in report.manual_vs_autodiff
    ]


def main(argv=None) -> dict:
    p = common.parser("notes_network", __doc__, (
        "loss.png (mean training loss per epoch, each dtype)",))
    common.add_training_args(p, epochs=200, alpha=0.1, batch_size=16)
    p.add_argument("--hidden", choices=("relu", "tanh", "sigmoid"), default="relu",
                   help="activation g of the 3 hidden units")
    p.add_argument("--examples", type=common.count(1), default=256,
                   help="number of synthetic training examples m")
    args = p.parse_args(argv)
    if args.batch_size > args.examples:
        p.error(f"--batch-size must be <= --examples ({args.examples}), got {args.batch_size}")
    common.setup(args)
    if args.smoke:
        args.epochs, args.examples = 3, 32
    from jaxnn import DenseNetwork, sgd

    run = common.Run(args, "notes_network", argv)
    folder = run.folder
    net = DenseNetwork((4, 3, 1), args.hidden, "identity", "squared_error")
    rows, summary = [], {}
    dtypes = ["float32"] + (["float64"] if jax.config.jax_enable_x64 else [])
    for dtype_name in dtypes:
        dtype = jnp.dtype(dtype_name)
        key_init, key_data, key_train = jax.random.split(jax.random.key(args.seed), 3)
        X, Y = make_data(key_data, args.examples, dtype)
        params = net.init(key_init, "xavier_normal", dtype)
        report0, r0 = gradient_rows(net, params, X, Y, "init", dtype_name)
        source = "manual" if args.source == "both" else args.source
        run.stage = f"training in {dtype_name}"
        with common.Timer() as t:
            params, history = sgd.train(net, params, X, Y, key=key_train, alpha=args.alpha,
                                        epochs=args.epochs, batch_size=args.batch_size,
                                        source=source)
        report1, r1 = gradient_rows(net, params, X, Y, "trained", dtype_name)
        rows += r0 + r1
        summary[dtype_name] = {
            "loss_first_epoch": history["loss"][0], "loss_last_epoch": history["loss"][-1],
            "train_seconds": t.seconds,
            "max_manual_vs_autodiff": max(report0.max(), report1.max()),
            "max_fd_vs_autodiff": max(report0.max("fd_vs_autodiff"),
                                      report1.max("fd_vs_autodiff")),
            "kinks": sum(report0.kinks.values()) + sum(report1.kinks.values()),
            "loss_history": history["loss"],
        }

    plt = common.pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.5), layout="constrained")
    for dtype_name, s in summary.items():
        ax.semilogy(np.arange(1, len(s["loss_history"]) + 1), s["loss_history"], label=dtype_name)
    ax.set(xlabel="epoch", ylabel="mean loss", title="4-3-1 network, explicit SGD")
    ax.legend()
    common.save_figure(fig, folder, "loss.png")
    run.finish({"gradient_check": rows, "summary": summary})

    print(f"4-3-1 network ({args.hidden} hidden, identity output, squared error), "
          f"{args.epochs} epochs of explicit SGD, alpha={args.alpha}")
    print(common.table(rows))
    print(common.table([{"dtype": d, "first loss": s["loss_first_epoch"],
                         "last loss": s["loss_last_epoch"],
                         "max manual/autodiff": s["max_manual_vs_autodiff"],
                         "max fd/autodiff": s["max_fd_vs_autodiff"]}
                        for d, s in summary.items()]))
    print(f"results: {folder}")
    return {"folder": str(folder), "summary": summary}


if __name__ == "__main__":
    import sys

    sys.exit(common.run(main))
