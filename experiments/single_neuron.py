"""The notes' single neuron f(x) = max(a x + b, 0): predict a house's price from its size.

Question: fitted by explicit gradient descent on L = ½ (f(x) − y)², does the neuron find
the relation that generated the data (data.house_prices: $200 per square foot above
800 square feet, nothing below, plus noise), and does the hand-written gradient

    δ = (f − y) · 1[a x + b > 0],   ∂L/∂a = δ x,   ∂L/∂b = δ      (mean over the m houses)

equal jax.grad of the loss along the way?

Expected: a ≈ 0.2 thousand dollars per square foot and b ≈ −160 thousand dollars
(the price turns positive near 800 square feet), within a few percent at the default
noise; a mean loss near ½ (noise / y_scale)² ≈ 0.005 on the scaled data. Manual and
autodiff gradients agree to rounding (~1e-7 relative in float32, ~1e-16 in float64),
and trajectories trained with either source coincide up to rounding.

The neuron is fitted on scaled numbers (data.NeuronScaling: x standardised, y divided
by its RMS) and mapped back to dollars. It starts alive (a > 0, b > 0): a neuron with
a x + b ≤ 0 on every house has zero gradient and never learns.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from experiments import common


def forward(params, x):
    """f(x) = max(a x + b, 0) for every house. params {"a": (), "b": ()}; x: (m,). Returns (m,)."""
    return jax.nn.relu(params["a"] * x + params["b"])


def loss(params, x, y):
    """(1/m) Σ_i ½ (f(x^(i)) − y^(i))²; ``jax.grad`` of this is the autodiff gradient."""
    return jnp.mean(0.5 * (forward(params, x) - y) ** 2)


def manual_grad(params, x, y):
    """(mean loss, {"a": ∂L/∂a, "b": ∂L/∂b}) by hand, no autodiff.

    z = a x + b, f = max(z, 0), δ = (f − y) · 1[z > 0] (ReLU'(0) = 0, as jax.nn.relu);
    ∂L/∂a = mean(δ x), ∂L/∂b = mean(δ).
    """
    z = params["a"] * x + params["b"]
    f = jax.nn.relu(z)
    delta = (f - y) * (z > 0).astype(z.dtype)
    return jnp.mean(0.5 * (f - y) ** 2), {"a": jnp.mean(delta * x), "b": jnp.mean(delta)}


GRADIENTS = {"manual": manual_grad, "autodiff": jax.value_and_grad(loss)}


def kink_pattern(params, x):
    """Which houses the neuron is active on (a x + b > 0): finite differences across a change
    of this pattern cross the ReLU's kink."""
    return params["a"] * x + params["b"] > 0


@functools.partial(jax.jit, static_argnames=("source", "batch_size"))
def epoch(params, x, y, key, alpha, *, source: str, batch_size: int):
    """One epoch of minibatch SGD as a ``lax.scan``: θ ← θ − α ∂L/∂θ on each minibatch.

    Returns (params, per-step losses of shape (m // batch_size,)).
    """
    from jaxnn import data, sgd

    def step(params, idx):
        value, grads = GRADIENTS[source](params, x[idx], y[idx])
        return sgd.update(params, grads, alpha), value

    return jax.lax.scan(step, params, data.minibatches(key, x.shape[0], batch_size))


def fit(params, x, y, key, args, source: str, desc: str):
    """Train for args.epochs epochs from ``params``; epoch e shuffles with fold_in(key, e).

    Returns (params, per-epoch mean losses, seconds).
    """
    alpha = jnp.asarray(args.alpha, x.dtype)
    history = []
    with common.Timer() as t:
        for e in common.progress(range(args.epochs), args, desc=desc, unit="epoch"):
            params, losses = epoch(params, x, y, jax.random.fold_in(key, e), alpha,
                                   source=source, batch_size=args.batch_size)
            history.append(float(jnp.mean(losses)))
    return params, history, t.seconds


@functools.partial(jax.jit, static_argnames=("h",))
def gradients(params, x, y, h: float):
    """Manual, autodiff and central-difference gradients, and where a step crossed the kink.

    Central differences (L(θ + h e_i) − L(θ − h e_i)) / 2h for θ_i = a and b; a step that
    moves some house across a x + b = 0 crosses the ReLU's kink, where the quotient is
    not a derivative.
    """
    _, manual = manual_grad(params, x, y)
    autodiff = jax.grad(loss)(params, x, y)
    fd, kinks = {}, {}
    for name in params:
        plus = {**params, name: params[name] + h}
        minus = {**params, name: params[name] - h}
        fd[name] = (loss(plus, x, y) - loss(minus, x, y)) / (2 * h)
        kinks[name] = jnp.any(kink_pattern(plus, x) != kink_pattern(minus, x))
    return manual, autodiff, fd, kinks


def gradient_check(params, x, y) -> dict:
    """Max relative error of manual vs autodiff, and of central differences vs autodiff.

    Differences use h = 1e-5 in float64 and 1e-2 in float32 (``gradcheck.default_step``);
    a quotient whose step crosses the kink is left out, and fd_vs_autodiff is NaN when
    both were (likely in float32, where the step is large).
    """
    from jaxnn import gradcheck

    h = gradcheck.default_step(x.dtype)
    manual, autodiff, fd, kinks = gradients(params, x, y, h)
    floor = 1e-5 if x.dtype == jnp.float64 else 1e-2
    smooth = [float(gradcheck.relative_error(fd[k], autodiff[k], floor))
              for k in params if not bool(kinks[k])]
    return {"manual_vs_autodiff": max(gradcheck.compare_trees(manual, autodiff).values()),
            "fd_vs_autodiff": max(smooth) if smooth else np.nan,
            "kinks": sum(int(k) for k in kinks.values())}


def plot(folder, x_raw, y_raw, fits, scaling, history):
    plt = common.pyplot()
    fig, (ax, ax_loss) = plt.subplots(1, 2, figsize=(10, 3.8), layout="constrained")
    ax.scatter(x_raw, y_raw, s=10, alpha=0.6, label="houses")
    grid = np.linspace(float(x_raw.min()), float(x_raw.max()), 400)
    ax.plot(grid, np.maximum(0.2 * (grid - 800.0), 0), "k--", lw=1,
            label="generating relation: 200 \\$/sqft above 800 sqft")
    styles = {"manual": dict(lw=3.5, alpha=0.5), "autodiff": dict(lw=1.5, ls="--")}
    for source, p in fits.items():
        a_raw, b_raw = scaling.to_raw(float(p["a"]), float(p["b"]))
        ax.plot(grid, np.maximum(a_raw * grid + b_raw, 0), **styles[source],
                label=f"{source}: max({1000 * a_raw:.0f} \\$/sqft · x − "
                      f"{-b_raw:.0f} thousand \\$, 0)")
    ax.set(xlabel="size (square feet)", ylabel="price (thousand \\$)",
           title="f(x) = max(ax + b, 0)")
    ax.legend(fontsize=8)
    for source, losses in history.items():
        ax_loss.semilogy(np.arange(1, len(losses) + 1), losses, label=source)
    ax_loss.set(xlabel="epoch", ylabel="mean loss (scaled data)", title="training loss")
    ax_loss.legend()
    return common.save_figure(fig, folder, "fit.png")


def finite(text: str) -> float:
    """An argparse ``type``: a finite number."""
    import argparse
    import math

    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def main(argv=None) -> dict:
    p = common.parser("single_neuron", __doc__, (
        "fit.png (the houses, the fitted neurons and the loss per epoch)",))
    common.add_training_args(p, epochs=100, alpha=0.2, batch_size=10)
    p.add_argument("--examples", type=common.count(1), default=200, help="number of houses m")
    p.add_argument("--noise", type=finite, default=25.0,
                   help="noise of the prices, thousand dollars")
    p.add_argument("--a0", type=finite, default=1.0, help="initial a (scaled units)")
    p.add_argument("--b0", type=finite, default=0.1, help="initial b (scaled units)")
    args = p.parse_args(argv)
    if not 1 <= args.batch_size <= args.examples:
        p.error(f"--batch-size must be in [1, --examples={args.examples}], got {args.batch_size}")
    common.setup(args)
    if args.smoke:
        args.epochs, args.examples = 3, 40
        args.batch_size = min(args.batch_size, args.examples)
    from jaxnn import data

    if args.noise < 0:
        p.error(f"--noise must be >= 0, got {args.noise}")
    dtype = common.dtype_of(args)
    key_data, key_train = jax.random.split(jax.random.key(args.seed))
    x_raw, y_raw = data.house_prices(key_data, args.examples, noise=args.noise, dtype=dtype)
    scaling = data.NeuronScaling.fit(x_raw, y_raw)
    x, y = (v[:, 0] for v in scaling.transform(x_raw, y_raw))
    init = {"a": jnp.asarray(args.a0, dtype), "b": jnp.asarray(args.b0, dtype)}
    if not bool(jnp.any(kink_pattern(init, x))):
        raise common.UsageError(f"--a0 {args.a0} --b0 {args.b0}: a x + b <= 0 on every house, "
                                "the neuron is dead from the start and would never learn")
    run = common.Run(args, "single_neuron", argv)
    folder = run.folder

    sources = ["manual", "autodiff"] if args.source == "both" else [args.source]
    fits, history, seconds, checks = {}, {}, {}, {"init": gradient_check(init, x, y)}
    for source in sources:
        run.stage = f"single neuron ({source} gradient)"
        fits[source], history[source], seconds[source] = fit(
            init, x, y, key_train, args, source, desc=f"single neuron ({source})")
        run.results["history"] = {"loss": history}
        checks[f"trained ({source})"] = gradient_check(fits[source], x, y)

    summary = {}
    for source, params in fits.items():
        a, b = float(params["a"]), float(params["b"])
        a_raw, b_raw = scaling.to_raw(a, b)
        summary[source] = {
            "a_scaled": a, "b_scaled": b,
            "a_thousand_dollars_per_sqft": a_raw, "b_thousand_dollars": b_raw,
            "dollars_per_sqft": 1000 * a_raw, "zero_crossing_sqft": -b_raw / a_raw,
            "final_loss": float(loss(params, x, y)),
            "rmse_thousand_dollars": float(jnp.sqrt(2 * loss(params, x, y)) * scaling.y_scale),
            "active_fraction": float(jnp.mean(kink_pattern(params, x))),
            "train_seconds": seconds[source],
        }
    main_source = sources[0]
    summary["a"] = summary[main_source]["a_thousand_dollars_per_sqft"]
    summary["b"] = summary[main_source]["b_thousand_dollars"]
    summary["final_loss"] = summary[main_source]["final_loss"]
    summary["max_manual_vs_autodiff"] = max(c["manual_vs_autodiff"] for c in checks.values())
    smooth = [c["fd_vs_autodiff"] for c in checks.values() if not np.isnan(c["fd_vs_autodiff"])]
    summary["max_fd_vs_autodiff"] = max(smooth) if smooth else float("nan")
    if len(fits) == 2:
        summary["trajectory_difference"] = common.tree_difference(fits["manual"],
                                                                  fits["autodiff"])

    plot(folder, np.asarray(x_raw[:, 0]), np.asarray(y_raw[:, 0]), fits, scaling, history)
    run.finish({
        "scaling": scaling._asdict(), "true": {"a": 0.2, "b": -160.0},
        "history": {"loss": history}, "gradient_check": checks, "summary": summary})

    print(f"single neuron f(x) = max(ax + b, 0) on {args.examples} houses, {args.epochs} "
          f"epochs of SGD, alpha={args.alpha}, batch {args.batch_size}, {args.dtype}")
    print(common.table([{"source": s, "a ($ per sqft)": summary[s]["dollars_per_sqft"],
                         "b (thousand $)": summary[s]["b_thousand_dollars"],
                         "zero at (sqft)": summary[s]["zero_crossing_sqft"],
                         "loss": summary[s]["final_loss"],
                         "rmse (thousand $)": summary[s]["rmse_thousand_dollars"],
                         "seconds": summary[s]["train_seconds"]} for s in fits]
                       + [{"source": "true", "a ($ per sqft)": 200.0, "b (thousand $)": -160.0,
                           "zero at (sqft)": 800.0}]))
    print(common.table([{"point": k, "manual/autodiff": c["manual_vs_autodiff"],
                         "fd/autodiff": fd_cell(c), "kinks": f"{c['kinks']} of 2"}
                        for k, c in checks.items()]))
    if any(c["kinks"] for c in checks.values()):
        print("fd/autodiff leaves out the coordinates whose finite-difference step moves a house "
              "across the kink a x + b = 0 (there the quotient is no derivative); kinks: how "
              f"many of a and b that was, with h = {gradcheck_step(x.dtype):g}")
    print(f"results: {folder}")
    return {"folder": str(folder), "summary": summary}


def gradcheck_step(dtype) -> float:
    from jaxnn import gradcheck

    return float(gradcheck.default_step(dtype))


def fd_cell(check: dict):
    """The fd/autodiff cell: the error, or why there is none."""
    if np.isnan(check["fd_vs_autodiff"]) and check["kinks"] == 2:
        return "none: a and b both on a kink"
    return check["fd_vs_autodiff"]


if __name__ == "__main__":
    import sys

    sys.exit(common.run(main))
