"""Why not initialise with zeros? Symmetry, and what N(0, 0.1), Xavier and He do in depth.

Question (the notes: "Do not use zeros as the initial values for parameters. Why?"):
what happens to the hidden units of a layer when every weight starts equal, and how do
the notes' N(0, 0.1), Xavier and He initialisations behave in a deep network?

Expected, part 1 (a 64-16-16-10 network on the digits, softmax output): when all the
rows of W^[l] start equal, every hidden unit of layer l computes the same z, receives
the same δ^[l] = (W^[l+1]ᵀ δ^[l+1]) ∘ g'(z^[l]) and gets the same update, so the largest
difference between two units (rows of W^[l]) stays exactly 0 for the whole training: the
layer acts as one unit. With *all* weights 0 the picture depends on g: tanh(0) = 0 and
ReLU(0) = 0 make a^[l] = 0, so ∂L/∂W^[l+1] = δ^[l+1] a^[l]ᵀ = 0 and δ^[l] = W^[l+1]ᵀ δ^[l+1]
= 0; every weight stays exactly 0 and only the output bias learns (test accuracy near
1/10). sigmoid(0) = 1/2, so a sigmoid network learns, but with identical units. A
nonzero constant init (all weights c) learns with tanh and ReLU too, still with
identical units. N(0, 0.1) breaks the tie from the first step.

Expected, part 2 (a 10-layer network, 64 units per hidden layer): a layer multiplies
the variance of a linear signal by fan_in · Var(W) = 64 Var(W): 0.64 for N(0, 0.1),
1 for Xavier (2 / 128) and 2 for He (2 / 64); ReLU halves it, tanh compresses it. So
He keeps a ReLU network's std of a^[l] and ||δ^[l]|| near constant across the layers,
Xavier lets them decay by about √0.5 per layer for ReLU and slowly for tanh, and
N(0, 0.1) shrinks them fastest; the smaller signals train more slowly in a fixed budget.
The per-layer factor (std a^[N-1] / std a^[1])^(1/(N-2)) is reported.
"""

import jax
import jax.numpy as jnp
import numpy as np

from experiments import common
from experiments.vanishing_gradients import accuracy, statistics

SYMMETRY_INITS = ("zeros", "constant", "normal")
DEEP_INITS = ("normal", "xavier_normal", "he")


def constant_init(model, c: float, dtype):
    """Every W^[l] filled with c / sqrt(n_{l-1}) and b^[l] = 0: symmetric but not zero."""
    return [{"W": jnp.full((n_out, n_in), c / n_in**0.5, dtype), "b": jnp.zeros((n_out,), dtype)}
            for n_in, n_out in zip(model.sizes[:-1], model.sizes[1:], strict=True)]


def unit_spread(params) -> list[float]:
    """Per hidden layer l < N: the largest difference between two units' incoming weights.

    max over i, j of max |W^[l]_i - W^[l]_j| (rows i, j) together with |b^[l]_i - b^[l]_j|;
    exactly 0 when all units of the layer are identical.
    """
    out = []
    for layer in params[:-1]:
        rows = jnp.concatenate([layer["W"], layer["b"][:, None]], axis=1)
        out.append(float(jnp.max(jnp.max(rows, axis=0) - jnp.min(rows, axis=0))))
    return out


def hidden_norms(params) -> list[float]:
    """||W^[l]|| (Frobenius) per hidden layer: 0 means the layer never moved from zeros."""
    return [float(jnp.linalg.norm(layer["W"])) for layer in params[:-1]]


def train(model, params, X, Y, args, epochs, desc, on_epoch_extra=None):
    from jaxnn import sgd

    bar, on_epoch = common.epoch_progress(args, epochs, desc, then=on_epoch_extra)
    with bar:
        try:
            params, history = sgd.train(model, params, X, Y, key=jax.random.key(args.seed + 1),
                                        alpha=args.alpha, epochs=epochs,
                                        batch_size=args.batch_size, source="manual",
                                        on_epoch=on_epoch)
            diverged = False
        except sgd.NonFiniteError as error:
            params, history, diverged = error.params, error.history, True
    return params, history, diverged


def symmetry_part(args, split, dtype) -> dict:
    from jaxnn import DenseNetwork

    X, Y = jnp.asarray(split.X_train), jnp.asarray(split.y_train)
    X_test, Y_test = jnp.asarray(split.X_test), jnp.asarray(split.y_test)
    out = {}
    for hidden in ("tanh", "sigmoid", "relu"):
        model = DenseNetwork((X.shape[1], args.width, args.width, 10), hidden, "softmax",
                             "softmax")
        for init in SYMMETRY_INITS:
            if init == "constant":
                params = constant_init(model, args.constant, dtype)
            else:
                params = model.init(jax.random.key(args.seed), init, dtype)
            spread = [unit_spread(params)]
            norms = [hidden_norms(params)]

            def track(epoch, params, opt_state, history, spread=spread, norms=norms):
                spread.append(unit_spread(params))
                norms.append(hidden_norms(params))

            params, history, diverged = train(model, params, X, Y, args, args.epochs,
                                              f"{hidden}, {init}", track)
            out[f"{hidden}/{init}"] = {
                "hidden": hidden, "init": init,
                "unit_spread": spread, "hidden_W_norm": norms,
                "max_spread_during_training": float(np.max(spread[1:])) if len(spread) > 1
                else float(np.max(spread)),
                "identical_units_throughout": bool(np.max(spread) == 0.0),
                "hidden_W_norm_final": norms[-1],
                "loss": history["loss"], "diverged": diverged,
                "test_accuracy": float(accuracy(model, params, X_test, Y_test)),
            }
    return out


def deep_part(args, split, dtype) -> dict:
    from jaxnn import DenseNetwork

    X, Y = jnp.asarray(split.X_train), jnp.asarray(split.y_train)
    X_test, Y_test = jnp.asarray(split.X_test), jnp.asarray(split.y_test)
    n_stat = min(args.stat_examples, X.shape[0])
    sizes = (X.shape[1],) + (args.deep_width,) * (args.depth - 1) + (10,)
    out = {}
    for hidden in ("relu",) if args.smoke else ("tanh", "relu"):
        model = DenseNetwork(sizes, hidden, "softmax", "softmax")
        for init in DEEP_INITS:
            params = model.init(jax.random.key(args.seed), init, dtype)
            stats = statistics(model, params, X[:n_stat], Y[:n_stat])
            params, history, diverged = train(model, params, X, Y, args, args.deep_epochs,
                                              f"{args.depth} layers, {hidden}, {init}")
            out[f"{hidden}/{init}"] = {
                "hidden": hidden, "init": init,
                "a_std": np.asarray(stats["a_std"]), "delta_norm": np.asarray(stats["delta_norm"]),
                "loss": history["loss"], "diverged": diverged,
                "test_accuracy": float(accuracy(model, params, X_test, Y_test)),
            }
    return out


def layer_factor(a_std) -> float:
    """Geometric mean change of std a^[l] per hidden layer, (std a^[N-1] / std a^[1])^(1/(N-2))."""
    hidden = np.asarray(a_std)[:-1]
    if len(hidden) < 2:
        return float("nan")
    return float((hidden[-1] / hidden[0]) ** (1 / (len(hidden) - 1)))


def plots(sym: dict, deep: dict, args, folder) -> None:
    plt = common.pyplot()
    hiddens = list(dict.fromkeys(r["hidden"] for r in sym.values()))
    fig, axes = plt.subplots(1, len(hiddens), figsize=(4.2 * len(hiddens), 3.6), sharey=True)
    for ax, hidden in zip(np.atleast_1d(axes), hiddens, strict=True):
        for init, style in zip(SYMMETRY_INITS, ("s-", "o--", "o-"), strict=True):
            r = sym[f"{hidden}/{init}"]
            spread = np.max(np.asarray(r["unit_spread"]), axis=1)
            # exact zeros drawn at 1e-12 on the log axis, marked in the legend
            shown = np.where(spread > 0, spread, 1e-12)
            ax.semilogy(np.arange(len(spread)), shown, style, ms=5 if init == "zeros" else 3,
                        label=f"{init}{' (exactly 0)' if r['identical_units_throughout'] else ''}")
        ax.set(xlabel="epoch", title=f"{hidden} hidden")
        ax.legend(fontsize=7)
    np.atleast_1d(axes)[0].set_ylabel("largest difference between two hidden units")
    fig.suptitle("Identical initial weights stay identical: max_{i,j} |W_i - W_j| per epoch "
                 "(an exact 0 is drawn at 1e-12)")
    fig.tight_layout()
    common.save_figure(fig, folder, "symmetry.png")

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    layers = np.arange(1, args.depth + 1)
    for key, r in deep.items():
        style = "-" if r["hidden"] == "relu" else "--"
        axes[0].semilogy(layers[:-1], r["a_std"][:-1], "o" + style, ms=3, label=key)
        axes[1].semilogy(layers, r["delta_norm"], "o" + style, ms=3, label=key)
    axes[0].set(xlabel="hidden layer l", ylabel="std of a^[l]", title="activations at init")
    axes[1].set(xlabel="layer l", ylabel="||δ^[l]||", title="deltas at init")
    axes[1].legend(fontsize=7)
    fig.suptitle(f"{args.depth}-layer network, width {args.deep_width}")
    fig.tight_layout()
    common.save_figure(fig, folder, "deep_init_statistics.png")


def main(argv=None) -> dict:
    p = common.parser("init_symmetry", __doc__, (
        "symmetry.png (spread between hidden units and loss per epoch, part 1)",
        "deep_init_statistics.png (activation spread and ||δ|| per layer at init, part 2)"))
    p.add_argument("--width", type=common.count(1), default=16,
                   help="units per hidden layer, part 1")
    p.add_argument("--epochs", type=common.count(1), default=20, help="training epochs, part 1")
    p.add_argument("--constant", type=float, default=0.5,
                   help="the symmetric init: every weight c / sqrt(fan_in)")
    p.add_argument("--depth", type=common.count(2), default=10,
                   help="layers of the deep network, part 2")
    p.add_argument("--deep-width", type=common.count(1), default=64,
                   help="units per hidden layer of the deep network, part 2")
    p.add_argument("--deep-epochs", type=common.count(1), default=20,
                   help="training epochs of the deep network, part 2")
    p.add_argument("--alpha", "--lr", dest="alpha", type=common.positive, default=0.05,
                   help="learning rate of the explicit SGD update, both parts")
    p.add_argument("--batch-size", type=common.count(1), default=32,
                   help="examples per SGD step, both parts")
    p.add_argument("--stat-examples", type=common.count(1), default=512,
                   help="training examples the part-2 statistics at init are computed over")
    args = p.parse_args(argv)
    common.setup(args)
    if args.smoke:
        args.epochs, args.deep_epochs, args.depth, args.stat_examples = 1, 1, 4, 64
    from jaxnn import data

    dtype = common.dtype_of(args)
    split = data.digits(seed=args.seed, dtype=dtype)
    if args.smoke:
        split = split._replace(X_train=split.X_train[:256], y_train=split.y_train[:256])
    if args.batch_size > len(split.y_train):
        p.error(f"--batch-size must be <= the {len(split.y_train)} training examples, "
                f"got {args.batch_size}")
    run = common.Run(args, "init_symmetry", argv)
    folder = run.folder
    run.stage = "part 1 (symmetric initialisations)"
    with common.Timer() as t1:
        sym = symmetry_part(args, split, dtype)
    run.stage = "part 2 (deep network)"
    with common.Timer() as t2:
        deep = deep_part(args, split, dtype)
    plots(sym, deep, args, folder)

    summary = {
        "symmetry": {k: {"identical_units_throughout": r["identical_units_throughout"],
                         "max_spread_during_training": r["max_spread_during_training"],
                         "hidden_W_norm_final": r["hidden_W_norm_final"],
                         "test_accuracy": r["test_accuracy"]} for k, r in sym.items()},
        "deep": {k: {"a_std_last_hidden": float(r["a_std"][-2]),
                     "a_std_factor_per_layer": layer_factor(r["a_std"]),
                     "delta_norm_first": float(r["delta_norm"][0]),
                     "delta_norm_last": float(r["delta_norm"][-1]),
                     "test_accuracy": r["test_accuracy"], "diverged": r["diverged"]}
                 for k, r in deep.items()},
        "seconds": {"symmetry": t1.seconds, "deep": t2.seconds},
    }
    run.finish({"symmetry": sym, "deep": deep, "summary": summary})

    print(f"Part 1: 64-{args.width}-{args.width}-10 on digits, {args.epochs} epochs "
          f"(alpha={args.alpha}), manual gradients")
    print(common.table([
        {"hidden": r["hidden"], "init": r["init"],
         "units identical": r["identical_units_throughout"],
         "max unit difference": r["max_spread_during_training"],
         "||W^[1]||, ||W^[2]|| after": ", ".join(f"{v:.3g}" for v in r["hidden_W_norm_final"]),
         "test acc": r["test_accuracy"]} for r in sym.values()], formats={"test acc": "percent"}))
    print(f"\nPart 2: {args.depth}-layer network, width {args.deep_width}, statistics at "
          f"init over {min(args.stat_examples, len(split.y_train))} examples, test accuracy "
          f"after {args.deep_epochs} epochs")
    print(common.table([
        {"hidden": r["hidden"], "init": r["init"], "std a^[1]": float(r["a_std"][0]),
         f"std a^[{args.depth - 1}]": float(r["a_std"][-2]),
         "factor per layer": layer_factor(r["a_std"]),
         "||δ^[1]||": float(r["delta_norm"][0]),
         f"||δ^[{args.depth}]||": float(r["delta_norm"][-1]),
         "test acc": r["test_accuracy"], "diverged": r["diverged"]} for r in deep.values()],
        formats={"test acc": "percent"}))
    print(f"results: {folder}")
    return {"folder": str(folder), "summary": summary}


if __name__ == "__main__":
    import sys

    sys.exit(common.run(main))
