"""A small CNN on CIFAR-10, from the python batches the user has on disk.

Question: trained with the hand-written convolutional backward pass and plain SGD, how
well does a network of the notes' kind (convolutions, ReLU, max pooling, dense layers,
softmax) classify 32x32 colour photographs of ten classes, and does its gradient match
jax.grad there too?

Point --data at the extracted ``cifar-10-batches-bin`` folder (recommended: the binary
batches are read with no pickle at all) or ``cifar-10-batches-py`` (``data_batch_1`` ..
``data_batch_5`` and ``test_batch``, read by a restricted unpickler), or the folder
holding it, through ``jaxnn.data.load_cifar10``.
Nothing is downloaded. Images are standardised per colour channel with the training
mean and standard deviation. The network (--layers, as in cnn_images):
Conv(32, 3x3, same) -> ReLU -> MaxPool 2 -> Conv(64, 3x3, same) -> ReLU -> MaxPool 2 ->
dense 128 -> ReLU -> softmax over 10.

Expected: far above the 10% of guessing after a few epochs; a network this small and
plain SGD without augmentation usually ends near 60-70% on the 10,000 test images.
Manual and autodiff gradients agree to rounding (~1e-6 of each leaf's largest entry in
float32). On two CPU cores an epoch over the 50,000 training images takes minutes;
--train-limit N trains on the first N for a quick look.
"""

import sys

import jax
import numpy as np

from experiments import cnn_images, common

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
           "truck")
LAYERS = "conv:32:3:1:same,pool:2,conv:64:3:1:same,pool:2,dense:128"
WRITES = ("training.png (loss and test accuracy per epoch)",
          "checkpoints/train/ (the training state every --checkpoint-every epochs)")


def load(args):
    """The CIFAR-10 ``data.Split`` from --data, standardised per channel, limited as asked."""
    from jaxnn import data

    if args.data is None:
        raise common.UsageError(
            "--data PATH is needed: the folder of CIFAR-10's batches, cifar-10-batches-bin "
            "or cifar-10-batches-py; nothing is downloaded")
    try:
        X_train, y_train = data.load_cifar10(args.data, "train")
        X_test, y_test = data.load_cifar10(args.data, "test")
    except (OSError, ValueError) as error:
        raise common.UsageError(f"--data {args.data}: {error}") from None
    if args.train_limit is not None:
        X_train, y_train = X_train[: args.train_limit], y_train[: args.train_limit]
    if args.test_limit is not None:
        X_test, y_test = X_test[: args.test_limit], y_test[: args.test_limit]
    mean = X_train.mean(axis=(0, 1, 2), dtype=np.float64)
    std = X_train.std(axis=(0, 1, 2), dtype=np.float64)
    std = np.where(std > 0, std, 1.0)
    dtype = common.dtype_of(args)
    return data.Split(((X_train - mean) / std).astype(dtype), y_train,
                      ((X_test - mean) / std).astype(dtype), y_test)


def network(args):
    """The CNN of --layers on (32, 32, 3) images, 10 classes."""
    from jaxnn.cnn import CNN

    layers, dense = cnn_images.parse_layers(args.layers)
    try:
        return CNN((32, 32, 3), layers, dense + (10,), conv_method=args.conv_method)
    except (TypeError, ValueError) as error:
        raise common.UsageError(f"--layers {args.layers}: {error}") from None


def plot(folder, history, baseline):
    plt = common.pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), layout="constrained")
    for source, r in history.items():
        epochs = np.arange(1, len(r["loss"]) + 1)
        axes[0].semilogy(epochs, r["loss"], "o-", ms=3, label=f"{source} gradient")
        axes[1].plot(epochs, 100 * np.asarray(r["test_accuracy"]), "o-", ms=3, label=source)
    axes[1].axhline(100 * baseline, ls=":", color="gray", lw=1, label="majority class")
    axes[0].set(xlabel="epoch", ylabel="mean training loss", title="CIFAR-10: training loss")
    axes[1].set(xlabel="epoch", ylabel="test accuracy (%)", title="held-out accuracy")
    for ax in axes:
        ax.legend(fontsize=8)
    return common.save_figure(fig, folder, "training.png")


def main(argv=None) -> dict:
    p = common.parser("cifar10", __doc__, WRITES)
    common.add_training_args(p, epochs=10, alpha=0.02, batch_size=32)
    common.add_checkpoint_args(p)
    p.set_defaults(source="manual")
    p.add_argument("--data", default=None, metavar="PATH",
                   help="the cifar-10-batches-bin or cifar-10-batches-py folder (or its "
                        "parent); required")
    p.add_argument("--layers", default=LAYERS, metavar="SPEC",
                   help=f"the network's layers, {cnn_images.LAYER_HELP}")
    p.add_argument("--lr-schedule", choices=("constant", "cosine"), default="cosine",
                   help="learning rate per epoch: --alpha throughout, or cosine decay from "
                        "--alpha towards 0")
    p.add_argument("--conv-method", choices=("lax", "im2col"), default="im2col",
                   help="how the convolutions (forward and hand-written backward) compute: "
                        "patches and one matrix product, or lax.conv_general_dilated")
    p.add_argument("--train-limit", type=common.count(1), default=None, metavar="N",
                   help="train on the first N training images only (default: all 50,000)")
    p.add_argument("--test-limit", type=common.count(1), default=None, metavar="N",
                   help="test on the first N test images only (default: all 10,000)")
    args = p.parse_args(argv)
    common.setup(args)
    if args.smoke:
        args.epochs = 1
        args.train_limit = min(args.train_limit or 512, 512)
        args.test_limit = min(args.test_limit or 256, 256)
    from jaxnn import data

    net = network(args)
    split = load(args)
    if args.batch_size > len(split.y_train):
        raise common.UsageError(f"--batch-size must be <= the {len(split.y_train)} training "
                                f"images, got {args.batch_size}")
    run = common.Run(args, "cifar10", argv)
    sources = ["manual", "autodiff"] if args.source == "both" else [args.source]
    key_init, key_train = jax.random.split(jax.random.key(args.seed))
    init = net.init(key_init, "he", common.dtype_of(args))
    params = common.train_sources(
        run, net, init, split, key_train, sources=sources, epochs=args.epochs,
        alpha=args.alpha, batch_size=args.batch_size, lr_schedule=args.lr_schedule,
        desc=f"CIFAR-10 CNN ({', '.join(sources)})", into=run.results,
        options={"--data": str(args.data), "--train-limit": args.train_limit,
                 "--test-limit": args.test_limit, "--conv-method": args.conv_method})
    main_source = sources[0]
    at_init = cnn_images.manual_vs_autodiff(net, init, split)
    trained = cnn_images.manual_vs_autodiff(net, params[main_source], split)
    history = run.results["history"]
    baseline = data.majority_baseline(split.y_train, split.y_test)
    summary = {
        "m_train": len(split.y_train), "m_test": len(split.y_test), "baseline": baseline,
        "parameters": int(sum(leaf.size for leaf in jax.tree.leaves(init))),
        "test_accuracy": history[main_source]["test_accuracy"][-1],
        **{f"test_accuracy_{s}": r["test_accuracy"][-1] for s, r in history.items()},
        **{f"train_seconds_{s}": r["seconds"] for s, r in history.items()},
        **cnn_images.gradient_errors(at_init, trained),
    }
    plot(run.folder, history, baseline)
    run.finish({"network": repr(net), "classes": CLASSES, "summary": summary})

    print(f"CIFAR-10 ({args.data}): {summary['m_train']} train / {summary['m_test']} test "
          f"images, {args.layers}, {args.epochs} epochs of plain SGD, alpha={args.alpha} "
          f"({args.lr_schedule}), batch {args.batch_size}, {args.dtype}")
    print(common.table([{"source": s, "final loss": r["loss"][-1],
                         "train acc": r["train_accuracy"][-1],
                         "test acc": r["test_accuracy"][-1], "seconds": r["seconds"]}
                        for s, r in history.items()],
                       formats={"train acc": "percent", "test acc": "percent"}))
    print(f"manual/autodiff gradient difference, relative to each leaf's largest entry: "
          f"{common.difference(summary['manual_vs_autodiff'])}; majority-class baseline "
          f"{common.percent(baseline)}")
    print(f"results: {run.folder}")
    return {"folder": str(run.folder), "summary": summary}


if __name__ == "__main__":
    sys.exit(common.run(main))
