"""A two-layer MLP on handwritten digits, trained twice: with the hand-written δ recursion
and with jax.grad, from the same initialisation and the same minibatch order.

Question: if the manual gradient is right, the two trainings are the same computation up
to floating-point rounding. Do the two parameter trajectories stay together over a
whole training run, and how well does the network classify held-out digits?

Expected: on scikit-learn's 8x8 digits (64-128-10, ReLU hidden layer, softmax output,
softmax loss, He initialisation, explicit SGD) both runs reach >= 97% test accuracy,
with the same accuracy. In float64 the trajectories agree to ~1e-14 throughout. In
float32 they start ~1e-7 apart after one epoch (rounding: the two gradients sum in
different orders) and drift further as SGD at a large step amplifies it, to ~1e-4 after
30 epochs, with the same losses and accuracies to the printed digits. With
``--data PATH`` (a folder holding MNIST's IDX files, e.g. train-images-idx3-ubyte and
t10k-images-idx3-ubyte, optionally .gz) the same experiment runs on MNIST, images
flattened to 784 pixels in [0, 1]; a network of this size usually reaches about 98%
there (if the loss diverges at the default step, pass a smaller --alpha, e.g. 0.1).
"""

import jax
import numpy as np

from experiments import common


def load(args):
    """(X_train, y_train, X_test, y_test, name): digits (m, 64) or MNIST (m, 784)."""
    from jaxnn import data

    dtype = common.dtype_of(args)
    if args.data is None:
        split = data.digits(seed=args.seed, dtype=dtype)
        name = "digits 8x8"
    else:
        X_train, y_train = data.load_mnist(args.data, "train")
        X_test, y_test = data.load_mnist(args.data, "test")
        split = data.Split(X_train.reshape(len(X_train), -1).astype(dtype), y_train,
                           X_test.reshape(len(X_test), -1).astype(dtype), y_test)
        name = f"MNIST ({args.data})"
    if args.smoke:
        split = data.Split(split.X_train[:256], split.y_train[:256],
                           split.X_test[:128], split.y_test[:128])
    if args.train_limit is not None:
        split = split._replace(X_train=split.X_train[: args.train_limit],
                               y_train=split.y_train[: args.train_limit])
    return split, name


def plot(folder, runs, differences, title):
    plt = common.pyplot()
    fig, axes = plt.subplots(1, 3 if differences else 2, figsize=(14 if differences else 10, 3.8))
    styles = {"manual": dict(lw=2.5, alpha=0.6), "autodiff": dict(lw=1.2, ls="--")}
    for source, r in runs.items():
        epochs = np.arange(1, len(r["loss"]) + 1)
        axes[0].semilogy(epochs, r["loss"], label=f"{source} gradient", **styles[source])
        axes[1].plot(epochs, r["test_accuracy"], label=source, **styles[source])
    axes[0].set(xlabel="epoch", ylabel="mean training loss", title=title)
    axes[1].set(xlabel="epoch", ylabel="test accuracy", title="held-out accuracy")
    for ax in axes[:2]:
        ax.legend()
    if differences:
        epochs = np.arange(1, len(differences) + 1)
        axes[2].semilogy(epochs, [max(d["max_abs"], 1e-300) for d in differences],
                         label="max |θ_manual − θ_autodiff|")
        axes[2].semilogy(epochs, [max(d["max_rel"], 1e-300) for d in differences],
                         label="relative to each leaf's largest entry")
        axes[2].set(xlabel="epoch", ylabel="parameter difference",
                    title="manual vs autodiff trajectories")
        axes[2].legend(fontsize=8)
    return common.save_figure(fig, folder, "loss.png")


def main(argv=None) -> dict:
    p = common.parser("mlp_digits", __doc__)
    common.add_training_args(p, epochs=30, alpha=0.5, batch_size=32)
    common.add_checkpoint_args(p)
    p.add_argument("--hidden", type=int, default=128, help="hidden units n_1")
    p.add_argument("--data", default=None, metavar="PATH",
                   help="folder with MNIST's IDX files (train-images-idx3-ubyte, "
                        "train-labels-idx1-ubyte, t10k-images-idx3-ubyte, "
                        "t10k-labels-idx1-ubyte, optionally .gz); default: bundled 8x8 digits")
    p.add_argument("--train-limit", type=int, default=None,
                   help="use only the first N training examples")
    args = p.parse_args(argv)
    common.check_training_args(p, args)
    if args.hidden < 1 or (args.train_limit is not None and args.train_limit < 1):
        p.error("--hidden and --train-limit must be >= 1")
    common.setup(args)
    if args.smoke:
        args.epochs = 2
    from jaxnn import DenseNetwork, data

    split, name = load(args)
    if args.batch_size > len(split.y_train):
        p.error(f"--batch-size must be <= the {len(split.y_train)} training examples, "
                f"got {args.batch_size}")
    folder = common.run_dir(args, "mlp_digits")
    n_0 = split.X_train.shape[1]
    net = DenseNetwork((n_0, args.hidden, 10), "relu", "softmax", "softmax")
    key_init, key_train = jax.random.split(jax.random.key(args.seed))
    init = net.init(key_init, "he", common.dtype_of(args))

    sources = ["manual", "autodiff"] if args.source == "both" else [args.source]
    runs = {}
    for source in sources:
        _, runs[source] = common.train_recorded(
            net, init, split, key_train, args, source=source, epochs=args.epochs,
            alpha=args.alpha, batch_size=args.batch_size, desc=f"MLP ({source})",
            snapshots=len(sources) == 2, folder=folder)

    differences = []
    if len(sources) == 2:
        differences = [common.tree_difference(m, a) for m, a in
                       zip(runs["manual"].pop("snapshots"), runs["autodiff"].pop("snapshots"),
                           strict=True)]
    for r in runs.values():
        r.pop("snapshots", None)
    summary = {
        "data": name, "sizes": list(net.sizes), "m_train": len(split.y_train),
        "m_test": len(split.y_test),
        "baseline": data.majority_baseline(split.y_train, split.y_test),
        **{f"test_accuracy_{s}": r["test_accuracy"][-1] for s, r in runs.items()},
        **{f"train_accuracy_{s}": r["train_accuracy"][-1] for s, r in runs.items()},
        **{f"final_loss_{s}": r["loss"][-1] for s, r in runs.items()},
        **{f"train_seconds_{s}": r["seconds"] for s, r in runs.items()},
    }
    if differences:
        summary["max_abs_difference"] = max(d["max_abs"] for d in differences)
        summary["max_rel_difference"] = max(d["max_rel"] for d in differences)
        summary["max_rel_elementwise_difference"] = max(d["max_rel_elementwise"]
                                                        for d in differences)

    plot(folder, runs, differences, f"{name}: {'-'.join(map(str, net.sizes))} MLP")
    common.save_results(folder, args, {
        "history": runs, "trajectory_difference": differences, "summary": summary})

    print(f"{name}: MLP {'-'.join(map(str, net.sizes))}, relu/softmax, He init, "
          f"{args.epochs} epochs of SGD, alpha={args.alpha}, batch {args.batch_size}, "
          f"{args.dtype}; {summary['m_train']} train / {summary['m_test']} test")
    print(common.table([{"source": s, "final loss": r["loss"][-1],
                         "train acc": r["train_accuracy"][-1],
                         "test acc": r["test_accuracy"][-1], "seconds": r["seconds"]}
                        for s, r in runs.items()]))
    if differences:
        print(f"largest parameter difference between the trajectories: "
              f"{summary['max_abs_difference']:.2e} absolute, "
              f"{summary['max_rel_difference']:.2e} relative to each leaf's largest entry, "
              f"{summary['max_rel_elementwise_difference']:.2e} element-wise relative")
    print(f"majority-class baseline: {summary['baseline']:.4f}")
    print(f"results: {folder}")
    return {"folder": str(folder), "summary": summary}


if __name__ == "__main__":
    main()
