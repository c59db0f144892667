"""Vanishing gradients: ||δ^[l]|| layer by layer in deep sigmoid, tanh and ReLU networks.

Question: how does the size of δ^[l] = ∂L/∂z^[l], computed by the notes' recursion
δ^[l] = (W^[l+1]ᵀ δ^[l+1]) ∘ g'(z^[l]), change from the output layer back to the first
layer, at initialisation and during training, for each hidden activation?

Expected: each layer multiplies δ by W^[l+1]ᵀ and by g'(z^[l]). With variance-preserving
weights (Xavier for sigmoid and tanh, He for ReLU: the default ``--init auto``) the
weights keep the size and g' decides: sigmoid' ≤ 1/4, so δ shrinks by about a factor
4 per layer and ||δ^[1]|| / ||δ^[N]|| is about 4^-(N-1), ~1e-6 for N = 10; tanh' ≤ 1
and ≈ 1 near 0, so δ shrinks mildly; ReLU' is 0 or 1 and He's factor 2 makes up for
the zeros, so δ keeps its size. The sigmoid network's first layers then barely move,
and in a budget where the tanh and ReLU networks reach over 90% test accuracy it stays
near chance. During training ||δ^[N]|| = ||ŷ − y|| falls as the fit improves, so the
ratio of the others grows past 1. The per-layer factor (ratio)^(1/(N-1)) is reported.

δ^[l] is computed per example with ``jaxnn.backprop.backward`` over
``jaxnn.dense.forward_cache`` (the per-example ∂L/∂b^[l] is δ^[l]); ||δ^[l]|| is the
root mean square over examples of the per-example Euclidean norm.
"""

import jax
import jax.numpy as jnp
import numpy as np

from experiments import common

ACTIVATIONS = ("sigmoid", "tanh", "relu")
AUTO_INIT = {"sigmoid": "xavier_normal", "tanh": "xavier_normal", "relu": "he"}


def per_example_deltas(model, params, X, Y):
    """δ^[l] and a^[l] of every example by the hand-written recursion.

    Returns (deltas, activations): lists over l = 1..N of arrays (m, n_l); δ^[l] is the
    per-example ∂L/∂b^[l] that ``backprop.backward`` returns, a^[l] = g(z^[l]).
    """
    from jaxnn import activations, backprop, dense, losses

    g_prime = activations.get(model.hidden).g_prime

    def one(x, y):
        zs, a_s = dense.forward_cache(params, x, model.hidden, model.output)
        delta_N = losses.delta_output(model.output, model.loss_name, zs[-1], y)
        grads, _ = backprop.backward(params, zs, a_s, delta_N, g_prime)
        return [g["b"] for g in grads], a_s[1:]

    return jax.vmap(one)(X, Y)


def layer_statistics(model, params, X, Y) -> dict:
    """Per layer l = 1..N: ||δ^[l]|| (RMS over examples of ||δ^[l](i)||) and std of a^[l].

    Returns {"delta_norm": (N,), "a_std": (N,)} (a^[N] is the output ŷ).
    """
    deltas, acts = per_example_deltas(model, params, X, Y)
    return {
        "delta_norm": jnp.stack([jnp.sqrt(jnp.mean(jnp.sum(d * d, axis=1))) for d in deltas]),
        "a_std": jnp.stack([jnp.std(a) for a in acts]),
    }


statistics = jax.jit(layer_statistics, static_argnums=0)
accuracy = jax.jit(lambda model, params, X, Y: model.accuracy(params, X, Y), static_argnums=0)


def train_and_track(model, params, data, args, record_epochs, desc):
    """Train with manual gradients; layer statistics at epoch 0 and after ``record_epochs``."""
    from jaxnn import sgd

    X, Y, X_stat, Y_stat = data
    track = {0: {k: np.asarray(v) for k, v in statistics(model, params, X_stat, Y_stat).items()}}

    def record(epoch, params, opt_state, history):
        if epoch + 1 in record_epochs:
            stats = statistics(model, params, X_stat, Y_stat)
            track[epoch + 1] = {k: np.asarray(v) for k, v in stats.items()}

    bar, on_epoch = common.epoch_progress(args, args.epochs, desc, then=record)
    with bar:
        try:
            params, history = sgd.train(model, params, X, Y, key=jax.random.key(args.seed + 1),
                                        alpha=args.alpha, epochs=args.epochs,
                                        batch_size=args.batch_size, source="manual",
                                        on_epoch=on_epoch)
        except sgd.NonFiniteError as error:
            params, history = error.params, error.history
    return params, history, track


def main(argv=None) -> dict:
    p = common.parser("vanishing_gradients", __doc__, (
        "delta_norm_per_layer.png (||δ^[l]|| per layer at several epochs, each activation)",
        "ratio_first_last.png (||δ^[1]|| / ||δ^[N]|| per epoch)"))
    p.add_argument("--depth", type=common.count(2), default=10,
                   help="number of layers N (N - 1 hidden)")
    p.add_argument("--width", type=common.count(1), default=64, help="units per hidden layer")
    p.add_argument("--init", default="auto",
                   choices=("auto", "normal", "xavier_normal", "xavier_uniform", "he"),
                   help="auto: Xavier for sigmoid and tanh, He for ReLU")
    p.add_argument("--epochs", type=common.count(1), default=30, help="training epochs")
    p.add_argument("--alpha", "--lr", dest="alpha", type=common.positive, default=0.05,
                   help="learning rate of the explicit SGD update")
    p.add_argument("--batch-size", type=common.count(1), default=32,
                   help="examples per SGD step")
    p.add_argument("--stat-examples", type=common.count(1), default=512,
                   help="training examples the layer statistics are averaged over")
    args = p.parse_args(argv)
    common.setup(args)
    if args.smoke:
        args.depth, args.epochs, args.stat_examples = min(args.depth, 4), 1, 64
    if args.depth < 2:
        p.error("--depth must be at least 2 (one hidden layer)")
    from jaxnn import DenseNetwork, data

    dtype = common.dtype_of(args)
    split = data.digits(seed=args.seed, dtype=dtype)
    X, Y = jnp.asarray(split.X_train), jnp.asarray(split.y_train)
    X_test, Y_test = jnp.asarray(split.X_test), jnp.asarray(split.y_test)
    if args.smoke:
        X, Y = X[:256], Y[:256]
    n_stat = min(args.stat_examples, X.shape[0])
    stat_data = (X, Y, X[:n_stat], Y[:n_stat])
    record_epochs = sorted({e for e in (1, 2, 5, 10, 20, 50, 100) if e < args.epochs}
                           | {args.epochs})
    sizes = (X.shape[1],) + (args.width,) * (args.depth - 1) + (10,)
    if args.batch_size > X.shape[0]:
        p.error(f"--batch-size must be <= the {X.shape[0]} training examples, "
                f"got {args.batch_size}")
    run = common.Run(args, "vanishing_gradients", argv)
    folder = run.folder

    results, summary = {}, {}
    for hidden in ACTIVATIONS:
        init = AUTO_INIT[hidden] if args.init == "auto" else args.init
        model = DenseNetwork(sizes, hidden, "softmax", "softmax")
        params = model.init(jax.random.key(args.seed), init, dtype)
        run.stage = f"training the {hidden} network"
        with common.Timer() as t:
            params, history, track = train_and_track(model, params, stat_data, args,
                                                     record_epochs, f"{hidden} ({init})")
        ratios = {e: float(s["delta_norm"][0] / s["delta_norm"][-1]) for e, s in track.items()}
        last = max(track)
        results[hidden] = {"init": init, "track": track, "history": history}
        summary[hidden] = {
            "init": init,
            "ratio_first_to_last_at_init": ratios[0],
            "ratio_first_to_last_trained": ratios[last],
            "factor_per_layer_at_init": ratios[0] ** (1 / (args.depth - 1)),
            "trained_epochs": len(history["loss"]),
            "delta_norm_at_init": track[0]["delta_norm"],
            "test_accuracy": float(accuracy(model, params, X_test, Y_test)),
            "train_seconds": t.seconds,
        }

    plt = common.pyplot()
    fig, axes = plt.subplots(1, len(ACTIVATIONS), figsize=(4.2 * len(ACTIVATIONS), 3.8),
                             sharey=True, layout="constrained")
    layers = np.arange(1, args.depth + 1)
    for ax, hidden in zip(axes, ACTIVATIONS, strict=True):
        track = results[hidden]["track"]
        colors = plt.cm.viridis(np.linspace(0, 0.9, len(track)))
        for color, (epoch, s) in zip(colors, sorted(track.items()), strict=True):
            ax.semilogy(layers, s["delta_norm"], "o-", ms=3, color=color, label=f"epoch {epoch}")
        ax.set(xlabel="layer l", title=f"{hidden} ({results[hidden]['init']})")
        ax.set_xticks(layers)
    axes[0].set_ylabel("||δ^[l]|| (RMS over examples)")
    axes[-1].legend(fontsize=7)
    fig.suptitle(f"δ^[l] by the δ recursion, {args.depth}-layer network on digits")
    common.save_figure(fig, folder, "delta_norm_per_layer.png")

    fig, ax = plt.subplots(figsize=(5, 3.6), layout="constrained")
    for hidden in ACTIVATIONS:
        track = results[hidden]["track"]
        epochs = sorted(track)
        ax.semilogy(epochs, [track[e]["delta_norm"][0] / track[e]["delta_norm"][-1]
                             for e in epochs], "o-", label=hidden)
    ax.set(xlabel="epoch", ylabel="||δ^[1]|| / ||δ^[N]||",
           title="first-layer δ relative to the output layer's")
    ax.legend()
    common.save_figure(fig, folder, "ratio_first_last.png")

    run.finish({"results": results, "summary": summary})
    print(f"{args.depth}-layer networks (width {args.width}) on digits, {args.epochs} epochs of "
          f"SGD (alpha={args.alpha}, batch {args.batch_size}), manual gradients")
    rows = []
    for hidden, s in summary.items():
        row = {"hidden": hidden, "init": s["init"]}
        for l in (1, args.depth // 2, args.depth):
            row[f"||δ^[{l}]|| at init"] = float(s["delta_norm_at_init"][l - 1])
        row["δ1/δN init"] = s["ratio_first_to_last_at_init"]
        row["per layer"] = s["factor_per_layer_at_init"]
        row["δ1/δN trained"] = s["ratio_first_to_last_trained"]
        row["test acc"] = s["test_accuracy"]
        rows.append(row)
    print(common.table(rows, formats={"test acc": "percent"}))
    print(f"results: {folder}")
    return {"folder": str(folder), "summary": summary}


if __name__ == "__main__":
    import sys

    sys.exit(common.run(main))
