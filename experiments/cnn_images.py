"""Convolutional networks on images: 8x8 handwritten digits and colour patches of two photos.

Question: trained with the hand-written convolutional backward pass (δ through dense
layers, flatten, pooling and convolutions), does a small CNN learn both tasks, what do
its first-layer filters look like, and does that gradient match jax.grad along the way?

- digits: scikit-learn's 8x8 digits as images (m, 8, 8, 1), pixels scaled to [0, 1],
  the training images with their copies shifted by one pixel up, down, left and right
  (--shifts; 5 x 1,438 examples, the 359 test images as they are):
  Conv(64 filters 3x3, same padding) -> ReLU -> MaxPool 2 -> dense 128 -> ReLU ->
  softmax over 10; 30 epochs of plain SGD, batch 16, the step decaying from 0.02 to 0 on
  a cosine (--lr-schedule), for each of three seeds (--seeds: each its own stratified
  80/20 split, initialisation and shuffles).
- patches: 64x64x3 patches of two photographs (china.jpg vs flower.jpg), split by
  spatial region: Conv(8 filters 4x4x3, stride 4, the notes' θ ∈ R^{4×4} on each
  channel) -> ReLU -> MaxPool 2 -> Conv(16, 3x3) -> ReLU -> MaxPool 2 -> softmax over 2.

--layers (and --patch-layers) take any such stack, e.g.
conv:32:3:1:same,pool:2,conv:64:3:1:same,pool:2,dense:128.

Expected: 99.2% test accuracy on the digits, the mean of three seeds (98.9-99.4%; 359
test images, one error is 0.28%), where a conv32-pool-conv64-pool-dense network trained
by SGD with momentum for 30 epochs reaches 98.9%; without the shifted copies
(--no-shifts) the same network reaches 98.1% (97.2-98.9%). About 99-100% on the patches
against a majority baseline of 50%. Manual and autodiff gradients differ by ~1e-7 of
each leaf's largest entry in float32 (~1e-15 in float64). The digit filters look like
small edge and stroke detectors; the patch filters mostly pick up colour (the two
photos differ in it). The convolutions run as im2col (patches and one matrix product,
--conv-method), which trains faster inside lax.scan on the CPU than lax's convolution.
"""

import argparse
import functools

import jax
import jax.numpy as jnp
import numpy as np

from experiments import common

TASKS = ("digits", "patches")


INPUTS = {"digits": ((8, 8, 1), 10), "patches": ((64, 64, 3), 2)}
LAYERS = {"digits": "conv:64:3:1:same,pool:2,dense:128",
          "patches": "conv:8:4:4,pool:2,conv:16:3:1:same,pool:2"}
LAYER_HELP = ("comma-separated layers: conv:F:K[:S[:P]] (F filters of K x K, stride S, "
              "padding P = valid, same or a number; 1 and valid if left out), pool:W[:S] "
              "(max pooling over W x W, stride S, W if left out), dense:N (a hidden dense "
              "layer of N "
              "units after flattening); ReLU after every conv and hidden dense layer, and a "
              "softmax output layer over the classes is added")


def parse_layers(text: str, flag: str = "--layers"):
    """(feature layers, hidden dense widths) from a layer spec such as
    "conv:32:3:1:same,pool:2,conv:64:3:1:same,pool:2,dense:128" (``LAYER_HELP``); any
    other text is a ``UsageError`` naming the item."""
    from jaxnn.cnn import Conv, MaxPool

    layers, dense = [], []

    def bad(item, why):
        return common.UsageError(f"{flag}: {why} in item {item!r} of {text!r}; expected "
                                 "conv:F:K[:S[:P]], pool:W[:S] or dense:N")

    for item in text.split(","):
        kind, *fields = item.strip().split(":")
        padding = "VALID"
        if kind == "conv" and len(fields) == 4:
            *fields, padding = fields
            padding = padding.upper() if padding.lower() in ("valid", "same") else padding
        try:
            numbers = [int(f) for f in fields]
        except ValueError:
            raise bad(item, "a size that is not an integer") from None
        if padding not in ("VALID", "SAME"):
            try:
                padding = int(padding)
            except ValueError:
                raise bad(item, "a padding other than valid, same or an integer") from None
        if any(n < 1 for n in numbers) or (isinstance(padding, int) and padding < 0):
            raise bad(item, "a size below 1")
        if kind == "conv" and 2 <= len(numbers) <= 3:
            layers.append(Conv(numbers[0], numbers[1], *numbers[2:], padding=padding))
        elif kind == "pool" and 1 <= len(numbers) <= 2:
            layers.append(MaxPool(*numbers))
        elif kind == "dense" and len(numbers) == 1:
            dense.append(numbers[0])
        else:
            raise bad(item, f"an unknown layer or the wrong number of fields ({kind!r})")
        if dense and kind != "dense":
            raise bad(item, "a feature layer after a dense layer")
    return tuple(layers), tuple(dense)


def network(task: str, conv_method: str, spec: str | None = None, flag: str = "--layers"):
    """The CNN for a task from its layer spec (default ``LAYERS[task]``, see the module
    docstring); a spec the image cannot take (a kernel larger than the map) is a
    ``UsageError``."""
    from jaxnn.cnn import CNN

    shape, classes = INPUTS[task]
    layers, dense = parse_layers(spec or LAYERS[task], flag)
    try:
        return CNN(shape, layers, dense + (classes,), conv_method=conv_method)
    except (TypeError, ValueError) as error:
        raise common.UsageError(f"{flag} {spec}: {error}") from None


SHIFTS = ((0, 0), (-1, 0), (1, 0), (0, -1), (0, 1))


def shifted_copies(X: np.ndarray, fill: float) -> np.ndarray:
    """Each image (m, H, W, C) and its copies moved by one pixel up, down, left and right,
    the uncovered row or column set to ``fill``: (5 m, H, W, C), the originals first."""
    m, H, W, _ = X.shape
    padded = np.pad(X, ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=fill)
    return np.concatenate([padded[:, 1 + dy : 1 + dy + H, 1 + dx : 1 + dx + W]
                           for dy, dx in SHIFTS])


def load(task: str, args, seed: int):
    """The task's ``data.Split`` for ``seed``: the digits in [0, 1] (or standardised per
    pixel with --standardize), with --shifts each training image and its 4 one-pixel
    shifts; --smoke keeps a few hundred digits and coarser patches."""
    from jaxnn import data

    dtype = common.dtype_of(args)
    if task == "digits":
        split = data.digits(seed=seed, as_images=True, dtype=dtype,
                            standardize=args.standardize)
        if args.smoke:
            split = data.Split(split.X_train[:256], split.y_train[:256],
                               split.X_test[:128], split.y_test[:128])
        if args.shifts:
            # the background: 0 in [0, 1]; standardised, the smallest value (a blank pixel)
            fill = float(split.X_train.min()) if args.standardize else 0.0
            split = split._replace(X_train=shifted_copies(split.X_train, fill).astype(dtype),
                                   y_train=np.tile(split.y_train, len(SHIFTS)))
        return split
    return data.color_patches(seed=seed, stride=32 if args.smoke else 16, dtype=dtype)


def settings(task: str, args) -> dict:
    """Epochs, learning rate, batch size and schedule of a task from the command line."""
    if task == "digits":
        return {"epochs": args.epochs, "alpha": args.alpha, "batch_size": args.batch_size,
                "lr_schedule": args.lr_schedule}
    return {"epochs": args.patch_epochs, "alpha": args.patch_alpha,
            "batch_size": args.patch_batch_size, "lr_schedule": "constant"}


@functools.partial(jax.jit, static_argnums=0)
def gradients(net, params, X, y):
    """(manual, autodiff) gradients of the mean loss; compiled once per network and shapes."""
    return net.manual_grad(params, X, y)[1], jax.grad(net.loss)(params, X, y)


def manual_vs_autodiff(net, params, split, m: int = 64) -> dict:
    """Manual vs autodiff gradient on the first m training examples (``common.tree_difference``):
    max_rel is relative to each leaf's largest entry, max_rel_elementwise is
    ``gradcheck``'s element-wise measure, which entries near 0 dominate in float32."""
    X, y = jnp.asarray(split.X_train[:m]), jnp.asarray(split.y_train[:m])
    with jax.default_matmul_precision("highest"):
        return common.tree_difference(*gradients(net, params, X, y))


def gradient_errors(at_init: dict, trained: dict) -> dict:
    """The larger of the two points for each measure of manual vs autodiff."""
    return {"manual_vs_autodiff": max(at_init["max_rel"], trained["max_rel"]),
            "manual_vs_autodiff_elementwise": max(at_init["max_rel_elementwise"],
                                                  trained["max_rel_elementwise"])}


def run_task(run, task: str, net, seeds, args) -> dict:
    """Train one task for each seed with the chosen gradient source(s), recorded into
    run.results["tasks"][task]; return the first seed's split and params, and a summary."""
    from jaxnn import data

    cfg = settings(task, args)
    sources = ["manual", "autodiff"] if args.source == "both" else [args.source]
    main = sources[0]
    record = run.results.setdefault("tasks", {})[task] = {
        "network": repr(net), "settings": cfg, "seeds": []}
    checks, first = [], None
    for seed in seeds:
        split = load(task, args, seed)
        key = jax.random.key(seed)
        key_init, key_train = jax.random.split(jax.random.fold_in(key, TASKS.index(task)))
        init = net.init(key_init, "he", common.dtype_of(args))
        record["seeds"].append({"seed": seed})
        params = common.train_sources(
            run, net, init, split, key_train, sources=sources, desc=f"CNN {task} seed {seed} "
            f"({', '.join(sources)})", tag=f"{task}-seed{seed}", into=record["seeds"][-1],
            options={"--conv-method": args.conv_method}, **cfg)
        checks.append(gradient_errors(manual_vs_autodiff(net, init, split),
                                      manual_vs_autodiff(net, params[main], split)))
        if first is None:
            first = {"split": split, "params": params[main]}
    runs = record["seeds"]
    accuracy = {s: [r["history"][s]["test_accuracy"][-1] for r in runs] for s in sources}
    summary = {
        "test_accuracy": float(np.mean(accuracy[main])),
        "test_accuracy_seeds": accuracy[main],
        "test_accuracy_range": [min(accuracy[main]), max(accuracy[main])],
        "seeds": list(seeds),
        "baseline": data.majority_baseline(first["split"].y_train, first["split"].y_test),
        "m_train": len(first["split"].y_train), "m_test": len(first["split"].y_test),
        "parameters": int(sum(leaf.size for leaf in jax.tree.leaves(first["params"]))),
        "manual_vs_autodiff": max(c["manual_vs_autodiff"] for c in checks),
        "manual_vs_autodiff_elementwise": max(c["manual_vs_autodiff_elementwise"]
                                              for c in checks),
        **{f"test_accuracy_{s}": float(np.mean(a)) for s, a in accuracy.items()},
        **{f"train_seconds_{s}": sum(r["history"][s]["seconds"] for r in runs)
           for s in sources},
    }
    differences = [d for r in runs for d in r.get("trajectory_difference", [])]
    if differences:
        summary["max_abs_difference"] = max(d["max_abs"] for d in differences)
        summary["max_rel_difference"] = max(d["max_rel"] for d in differences)
    return {"net": net, "split": first["split"], "params": first["params"],
            "records": runs[0]["history"], "summary": summary, "settings": cfg}


def plot_training(folder, runs):
    plt = common.pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), layout="constrained")
    for task, run in runs.items():
        for source, r in run["records"].items():
            epochs = np.arange(1, len(r["loss"]) + 1)
            axes[0].semilogy(epochs, r["loss"], label=f"{task} ({source})")
            axes[1].plot(epochs, 100 * np.asarray(r["test_accuracy"]),
                         label=f"{task} ({source})")
        axes[1].axhline(100 * run["summary"]["baseline"], ls=":", color="gray", lw=1)
    axes[0].set(xlabel="epoch", ylabel="mean training loss", title="training loss (first seed)")
    axes[1].set(xlabel="epoch", ylabel="test accuracy (%)",
                title="test accuracy (dotted: majority baselines)")
    for ax in axes:
        ax.legend(fontsize=8)
    return common.save_figure(fig, folder, "training.png")


def _show(ax, image):
    """An (H, W, 1) map in grey or an (H, W, 3) image in colour, scaled to its own range."""
    image = np.asarray(image, dtype=np.float64)
    low, high = image.min(), image.max()
    image = (image - low) / (high - low) if high > low else np.zeros_like(image)
    ax.imshow(image[..., 0] if image.shape[-1] == 1 else image,
              cmap="gray" if image.shape[-1] == 1 else None, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])


def plot_filters(folder, task, run, columns: int = 8, limit: int = 32):
    """The first convolution's kernels W[:, :, :, o], each scaled to its own range."""
    plt = common.pyplot()
    W = np.asarray(run["params"]["conv"][0]["W"])
    n = min(W.shape[-1], limit)
    rows = -(-n // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(columns * 1.1, rows * 1.1 + 0.6),
                             squeeze=False, layout="constrained")
    for o, ax in enumerate(axes.flat):
        if o < n:
            _show(ax, W[..., o])
        else:
            ax.axis("off")
    kh, kw, c_in, c_out = W.shape
    fig.suptitle(f"{task}: first-layer filters, {n} of {c_out} shown ({kh}x{kw}x{c_in}; "
                 "each scaled to its own range, dark = most negative)", fontsize=9)
    return common.save_figure(fig, folder, f"filters_{task}.png")


def plot_feature_maps(folder, task, run, index: int, limit: int = 16, columns: int = 8):
    """Test image ``index`` and the first convolution's feature maps g(z) for it, each with
    a colour bar of its values."""
    plt = common.pyplot()
    net, split = run["net"], run["split"]
    x = jnp.asarray(split.X_test[index : index + 1])
    _, cache = net.features(run["params"], x, keep=True)
    a = np.asarray(cache[1][0][0], dtype=np.float64)  # layer 2's input: g(z) of the first conv
    n = min(a.shape[-1], limit)
    rows = -(-n // columns)
    fig = plt.figure(figsize=(columns * 1.55 + 2.2, rows * 1.45 + 0.7), layout="constrained")
    grid = fig.add_gridspec(rows, columns + 1, width_ratios=[1.4] + [1] * columns)
    image_ax = fig.add_subplot(grid[:, 0])
    _show(image_ax, split.X_test[index])
    image_ax.set_title(f"input\n(label {split.y_test[index]})", fontsize=8)
    for o in range(n):
        ax = fig.add_subplot(grid[o // columns, 1 + o % columns])
        shown = ax.imshow(a[..., o], cmap="viridis", interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(f"map {o}" + (": all 0" if not a[..., o].any() else ""), fontsize=7)
        bar = fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.02)
        bar.ax.tick_params(labelsize=5)
    shown = f"all {n} maps" if n == a.shape[-1] else f"maps 0-{n - 1} shown, {n} of {a.shape[-1]}"
    fig.suptitle(f"{task}: first-layer feature maps g(z) of one test image, "
                 f"{a.shape[0]}x{a.shape[1]}; {shown}", fontsize=9)
    return common.save_figure(fig, folder, f"feature_maps_{task}.png")


WRITES = ("training.png (loss and test accuracy per epoch, first seed)",
          "filters_<task>.png (first-layer kernels)",
          "feature_maps_<task>.png (first-layer feature maps of one test image, colour bars)",
          "checkpoints/<task>-seed<S>/ (the training state every --checkpoint-every epochs)")


def main(argv=None) -> dict:
    p = common.parser("cnn_images", __doc__, WRITES)
    common.add_training_args(p, epochs=30, alpha=0.02, batch_size=16)
    common.add_checkpoint_args(p)
    p.set_defaults(source="manual")
    p.add_argument("--lr-schedule", choices=("constant", "cosine"), default="cosine",
                   help="learning rate per epoch on the digits: --alpha throughout, or "
                        "cosine decay from --alpha towards 0")
    p.add_argument("--layers", default=LAYERS["digits"], metavar="SPEC",
                   help=f"the digits network's layers, {LAYER_HELP}")
    p.add_argument("--shifts", action=argparse.BooleanOptionalAction, default=True,
                   help="train on each digit and its copies shifted by one pixel up, down, "
                        "left and right (5 times the examples; the test images stay as "
                        "they are)")
    p.add_argument("--standardize", action=argparse.BooleanOptionalAction, default=False,
                   help="standardise each digit pixel with the training mean and standard "
                        "deviation instead of scaling the pixels to [0, 1]")
    p.add_argument("--seeds", type=common.count(1), default=3, metavar="S",
                   help="train the digits with the seeds --seed, ..., --seed + S - 1 (each "
                        "its own split, initialisation and shuffles) and report their mean "
                        "and range; the patches use --seed")
    p.add_argument("--patch-epochs", type=common.count(1), default=8,
                   help="epochs on the colour patches")
    p.add_argument("--patch-alpha", type=common.positive, default=0.05,
                   help="learning rate on the colour patches")
    p.add_argument("--patch-batch-size", type=common.count(1), default=25,
                   help="examples per SGD step on the colour patches")
    p.add_argument("--patch-layers", default=LAYERS["patches"], metavar="SPEC",
                   help="the patch network's layers, as --layers")
    p.add_argument("--task", choices=("both",) + TASKS, default="both",
                   help="train on the digits (--epochs, --alpha, --batch-size), on the "
                        "colour patches (--patch-*), or both")
    p.add_argument("--conv-method", choices=("lax", "im2col"), default="im2col",
                   help="how the convolutions (forward and hand-written backward) compute: "
                        "patches and one matrix product, or lax.conv_general_dilated")
    args = p.parse_args(argv)
    common.setup(args)
    if args.smoke:
        args.epochs, args.patch_epochs = 2, 1

    tasks = TASKS if args.task == "both" else (args.task,)
    nets = {"digits": network("digits", args.conv_method, args.layers, "--layers"),
            "patches": network("patches", args.conv_method, args.patch_layers, "--patch-layers")}
    seeds = {"digits": [args.seed + i for i in range(args.seeds)], "patches": [args.seed]}
    for task in tasks:
        m = len(load(task, args, args.seed).y_train)
        if settings(task, args)["batch_size"] > m:
            raise common.UsageError(f"{task}: the batch size {settings(task, args)['batch_size']}"
                                    f" is more than the {m} training examples")
    run = common.Run(args, "cnn_images", argv)
    runs = {task: run_task(run, task, nets[task], seeds[task], args) for task in tasks}
    for task, r in runs.items():
        plot_filters(run.folder, task, r)
        # a colour patch with most contrast shows more than a patch of plain sky
        spread = r["split"].X_test.reshape(len(r["split"].y_test), -1).std(axis=1)
        plot_feature_maps(run.folder, task, r, 0 if task == "digits" else int(np.argmax(spread)))
    plot_training(run.folder, runs)

    summary = {f"{task}_{k}": v for task, r in runs.items() for k, v in r["summary"].items()}
    summary["max_manual_vs_autodiff"] = max(r["summary"]["manual_vs_autodiff"]
                                            for r in runs.values())
    summary["max_manual_vs_autodiff_elementwise"] = max(
        r["summary"]["manual_vs_autodiff_elementwise"] for r in runs.values())
    run.finish({"summary": summary})

    print(f"CNNs trained with {args.source} gradients, plain SGD, {args.dtype}, conv method "
          f"{args.conv_method}")
    rows = []
    for task, r in runs.items():
        s, cfg = r["summary"], r["settings"]
        low, high = s["test_accuracy_range"]
        rows.append({"task": task, "layers": args.layers if task == "digits" else
                     args.patch_layers, "epochs": cfg["epochs"],
                     "alpha": f"{cfg['alpha']:g} ({cfg['lr_schedule']})",
                     "seeds": len(s["seeds"]), "test acc (mean)": s["test_accuracy"],
                     "range": f"{common.percent(low)} - {common.percent(high)}",
                     "baseline": s["baseline"], "manual/autodiff": s["manual_vs_autodiff"],
                     "(element-wise)": s["manual_vs_autodiff_elementwise"],
                     "seconds": sum(v for k, v in s.items() if k.startswith("train_seconds_"))})
    print(common.table(rows, formats={"test acc (mean)": "percent", "baseline": "percent",
                                      "(element-wise)": "difference"}))
    print("manual/autodiff: largest |manual - autodiff| gradient difference relative to the "
          "leaf's largest entry, at init and after training; element-wise: gradcheck's "
          "|a - b| / max(|a|, |b|), dominated by entries that are zero up to rounding")
    for task, r in runs.items():
        if "max_abs_difference" in r["summary"]:
            print(f"{task}: largest parameter difference between the manual and autodiff "
                  f"trajectories {common.difference(r['summary']['max_abs_difference'])} "
                  "absolute")
    print(f"results: {run.folder}")
    return {"folder": str(run.folder), "summary": summary}


if __name__ == "__main__":
    import sys

    sys.exit(common.run(main))
