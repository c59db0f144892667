"""Per-example gradients: vmap of the δ recursion and of jax.grad vs a Python loop; DP-SGD.

Question: the δ recursion is written for one example, so ``jax.vmap`` of it gives every
example's own gradient ∂L_i/∂θ, not only their mean. Does it agree with vmap of
``jax.grad`` and with a loop over examples, what does vectorizing save, and what can
the per-example gradients be used for?

Expected: the three give the same per-example gradients (to rounding); the vmapped
forms run one batched program and are much faster than the loop, whose cost is one
dispatch per example. vmap of the manual recursion and vmap of ``jax.grad`` do the same
arithmetic by XLA's count (flops and bytes are printed) but need not take the same time:
the two programs are fused and scheduled differently. Worked use: DP-SGD (Abadi et al.,
2016) clips each example's gradient to norm C, sums, adds Gaussian noise N(0, σ²C²) to
every coordinate and divides by the expected batch size; a sum of clipped gradients has
a bounded sensitivity that the noise hides. On the digits the noise costs some test
accuracy against non-private SGD with the same steps, and clipping alone costs little.

Privacy budget: each step takes a Poisson sample of the training set (every example
independently with probability q = batch size / n, so a batch's size varies around the
batch size; the sum is divided by the expected size, which keeps the sensitivity C / B
whatever the sample), which is the sampling the accountant assumes. An epoch is
floor(n / batch size) such steps. ``dp-accounting``'s PLD accountant (privacy loss
distributions; the RDP accountant's looser bound is reported beside it) composes the
T = epochs · steps Poisson-subsampled Gaussian mechanisms, neighbouring data sets
differing by adding or removing one example, and gives ε at δ = ``--delta`` (1e-5 by
default, below 1/n). The three runs use the same sampling and differ only in C and σ.
"""

import math
import sys
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from experiments import common

FORMS = ("loop", "vmap manual", "vmap autodiff")


def per_example_fns(model):
    """{form: jitted (params, X, Y) -> per-example gradients, leaves (m, ...)}, plus ``one``."""
    from jaxnn import backprop, dense, losses

    def one_manual(params, x, y):
        return backprop.grad_example(params, x, y, model.hidden, model.output,
                                     model.loss_name)[1]

    def one_loss(params, x, y):
        z = dense.logits(params, x, model.hidden)
        return losses.output_loss(model.output, model.loss_name, z, y)

    vmap_manual = jax.jit(jax.vmap(one_manual, in_axes=(None, 0, 0)))
    vmap_autodiff = jax.jit(jax.vmap(jax.grad(one_loss), in_axes=(None, 0, 0)))
    return jax.jit(one_manual), vmap_manual, vmap_autodiff


def loop_fn(one, params, X, Y):
    """A Python loop over examples of the compiled one-example gradient, stacked."""
    rows = [(X[i], Y[i]) for i in range(X.shape[0])]

    def run():
        grads = [one(params, x, y) for x, y in rows]
        return jax.tree.map(lambda *g: jnp.stack(g), *grads)

    return run


def global_norms(per_example) -> jax.Array:
    """||g_i|| over all leaves for every example i. Leaves (m, ...). Returns (m,)."""
    squares = [jnp.sum(g.reshape(g.shape[0], -1) ** 2, axis=1)
               for g in jax.tree.leaves(per_example)]
    return jnp.sqrt(sum(squares))


def dp_gradient(per_example, key, C: float, sigma: float, mask=None, batch_size=None):
    """Clip each example's gradient to norm C, sum, add N(0, σ²C²) noise, divide by B.

    per_example: leaves (m, ...). mask: (m,) booleans, the examples in the batch (all
    when None); B = batch_size, the expected batch size (m when None). C = inf and σ = 0
    give the plain sum over the batch divided by B. Returns (gradient, fraction of the
    batch's examples whose norm exceeded C).
    """
    m = jax.tree.leaves(per_example)[0].shape[0]
    B = m if batch_size is None else batch_size
    norms = global_norms(per_example)
    factor = jnp.minimum(1.0, C / jnp.maximum(norms, jnp.finfo(norms.dtype).tiny))
    chosen = jnp.ones(m, bool) if mask is None else mask
    factor = jnp.where(chosen, factor, 0.0)
    leaves, treedef = jax.tree.flatten(per_example)
    keys = jax.random.split(key, len(leaves))
    noisy = []
    for g, k in zip(leaves, keys, strict=True):
        clipped_sum = jnp.tensordot(factor.astype(g.dtype), g, axes=1)
        # σ = 0 with C = inf would give 0 · inf: no noise term at all when σ is 0
        noise = jnp.where(sigma > 0, sigma * C, 0.0) * jax.random.normal(k, g.shape[1:], g.dtype)
        noisy.append((clipped_sum + noise.astype(g.dtype)) / B)
    clipped = jnp.sum(chosen & (norms > C)) / jnp.maximum(jnp.sum(chosen), 1)
    return jax.tree.unflatten(treedef, noisy), clipped


def poisson_masks(key, m: int, batch_size: int) -> jax.Array:
    """floor(m / batch_size) Poisson samples of m examples, each example in each with
    probability q = batch_size / m. Returns booleans (steps, m)."""
    return jax.random.uniform(key, (m // batch_size, m)) < batch_size / m


@partial(jax.jit, static_argnames=("per_example", "batch_size"))
def dp_epoch(params, X, Y, key, alpha, C, sigma, *, per_example, batch_size):
    """One epoch of DP-SGD (or SGD with C = inf, σ = 0) on Poisson samples, as a lax.scan.

    Every step computes all m per-example gradients and keeps its sample's (fixed shapes
    under jit; the digits are small). C and σ are traced, so the three settings share one
    compiled epoch. Returns (params, mean clipped fraction, mean batch size).
    """
    from jaxnn import sgd

    k_sample, k_noise = jax.random.split(key)
    masks = poisson_masks(k_sample, X.shape[0], batch_size)
    noise_keys = jax.random.split(k_noise, masks.shape[0])

    def body(params, mask_key):
        mask, k = mask_key
        g, clipped = dp_gradient(per_example(params, X, Y), k, C, sigma, mask, batch_size)
        return sgd.update(params, g, alpha), (clipped, jnp.sum(mask))

    params, (clipped, sizes) = jax.lax.scan(body, params, (masks, noise_keys))
    return params, jnp.mean(clipped), jnp.mean(sizes)


def privacy_budget(n: int, batch_size: int, steps: int, sigma: float, delta: float,
                   accountant: str = "pld") -> float:
    """ε of ``steps`` Poisson-subsampled Gaussian mechanisms (q = batch_size / n, noise
    multiplier σ) at δ, add-or-remove-one neighbours, by dp-accounting's PLD or RDP
    accountant. σ = 0 (no noise) gives inf."""
    import dp_accounting
    from absl import logging as absl_logging

    if sigma <= 0:
        return float("inf")
    if not 1 <= batch_size <= n or steps < 0 or not 0 < delta < 1:
        raise ValueError(f"need 1 <= batch_size <= n, steps >= 0, 0 < delta < 1; got "
                         f"n={n}, batch_size={batch_size}, steps={steps}, delta={delta}")
    event = dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(batch_size / n,
                                            dp_accounting.GaussianDpEvent(sigma)), steps)
    if accountant == "pld":
        acc = dp_accounting.pld.PLDAccountant()
    elif accountant == "rdp":
        acc = dp_accounting.rdp.RdpAccountant()
    else:
        raise ValueError(f"accountant must be 'pld' or 'rdp', got {accountant!r}")
    verbosity = absl_logging.get_verbosity()
    # RDP orders whose series does not converge are left out of the bound, with a warning
    absl_logging.set_verbosity(absl_logging.ERROR)
    try:
        acc.compose(event)
        return float(acc.get_epsilon(delta))
    finally:
        absl_logging.set_verbosity(verbosity)


def dp_training(args, split, dtype) -> dict:
    from jaxnn import DenseNetwork

    model = DenseNetwork((split.X_train.shape[1], args.width, 10), "relu", "softmax", "softmax")
    _, vmap_manual, vmap_autodiff = per_example_fns(model)
    per_example = vmap_manual if args.source == "manual" else vmap_autodiff
    X, Y = jnp.asarray(split.X_train), jnp.asarray(split.y_train)
    X_test, Y_test = jnp.asarray(split.X_test), jnp.asarray(split.y_test)
    n = X.shape[0]
    steps = args.epochs * (n // args.batch_size)
    settings = {
        "non-private": (float("inf"), 0.0),
        f"clip only (C={args.clip})": (args.clip, 0.0),
        f"DP-SGD (C={args.clip}, σ={args.noise})": (args.clip, args.noise),
    }
    init = model.init(jax.random.key(args.seed), "he", dtype)
    norms0 = global_norms(per_example(init, X[:512], Y[:512]))
    out = {"median_per_example_norm_at_init": float(jnp.median(norms0)), "runs": {},
           "sampling": "Poisson", "n": n, "sampling_probability": args.batch_size / n,
           "steps": steps, "delta": args.delta, "neighbours": "add or remove one example"}
    alpha = jnp.asarray(args.alpha, dtype)
    accuracy = jax.jit(model.accuracy)
    for name, (C, sigma) in settings.items():
        params, clipped, acc, sizes = init, [], [], []
        for e in common.progress(range(args.epochs), args, desc=name, unit="epoch"):
            key = jax.random.fold_in(jax.random.key(args.seed + 1), e)
            params, frac, size = dp_epoch(params, X, Y, key, alpha, jnp.asarray(C, dtype),
                                          jnp.asarray(sigma, dtype), per_example=per_example,
                                          batch_size=args.batch_size)
            clipped.append(float(frac))
            sizes.append(float(size))
            acc.append(float(accuracy(params, X_test, Y_test)))
        privacy = {a: privacy_budget(n, args.batch_size, steps, sigma, args.delta, a)
                   for a in ("pld", "rdp")}
        out["runs"][name] = {"C": C, "sigma": sigma, "test_accuracy": acc[-1],
                             "test_accuracy_per_epoch": acc, "clipped_fraction": clipped,
                             "mean_batch_size": float(np.mean(sizes)),
                             "epsilon": privacy["pld"], "epsilon_rdp": privacy["rdp"],
                             "delta": args.delta}
    return out


def readable_log_axes(ax, batch_sizes) -> None:
    """Ticks at the batch sizes on x, and at 1, 2, 5 × 10^k on y, as plain numbers."""
    from matplotlib.ticker import FuncFormatter, LogLocator

    ax.minorticks_off()
    ax.set_xticks(batch_sizes, [str(m) for m in batch_sizes])
    ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))


def at(rows: list[dict], m: int, form: str) -> dict:
    return next(r for r in rows if (r["m"], r["form"]) == (m, form))


def agreement(difference: float) -> str:
    """A relative difference for reading: "0 (identical)" when exactly zero."""
    return "0 (identical)" if difference == 0 else f"{difference:.2e}"


def main(argv=None) -> dict:
    p = common.parser("per_example_gradients", __doc__)
    p.add_argument("--width", type=int, default=64, help="hidden units of the 64-width-10 net")
    p.add_argument("--batch-sizes", default="16,64,256", help="m values for the timing")
    p.add_argument("--repeats", type=int, default=9, help="interleaved repeats per timing")
    p.add_argument("--epochs", type=int, default=15,
                   help="epochs of each DP-SGD run (floor(n / batch size) steps each)")
    p.add_argument("--alpha", "--lr", dest="alpha", type=float, default=0.1,
                   help="learning rate of the DP-SGD runs")
    p.add_argument("--batch-size", type=int, default=64,
                   help="expected DP-SGD batch size: Poisson sampling at q = batch size / n")
    p.add_argument("--delta", type=float, default=1e-5,
                   help="δ of the (ε, δ) privacy budget (keep it below 1/n)")
    p.add_argument("--clip", type=float, default=5.0, help="per-example clipping norm C")
    p.add_argument("--noise", type=float, default=1.0, help="noise multiplier σ")
    p.add_argument("--source", choices=("manual", "autodiff"), default="manual",
                   help="per-example gradients of the DP-SGD runs")
    p.epilog = ("Writes runs/per_example_gradients/<run>/: results.json (timings, DP-SGD "
                "runs with their (ε, δ)) and per_example_gradients.png.")
    args = p.parse_args(argv)
    try:
        batch_sizes = [int(s) for s in args.batch_sizes.split(",")]
    except ValueError:
        p.error(f"--batch-sizes must be comma-separated integers, got {args.batch_sizes!r}")
    checks = {"--width": args.width >= 1, "--repeats": args.repeats >= 1,
              "--epochs": args.epochs >= 1, "--batch-size": args.batch_size >= 1,
              "--alpha": math.isfinite(args.alpha) and args.alpha > 0,
              "--clip": args.clip > 0, "--noise": math.isfinite(args.noise) and args.noise >= 0,
              "--delta": 0 < args.delta < 1}
    for flag, ok in checks.items():
        if not ok:
            p.error(f"{flag} is out of range, got {getattr(args, flag[2:].replace('-', '_'))}"
                    " (widths, repeats, epochs, batch sizes >= 1; alpha, clip > 0; noise >= 0;"
                    " 0 < delta < 1)")
    common.setup(args)
    if args.smoke:
        batch_sizes, args.repeats, args.epochs = [8], 2, 1
    from jaxnn import DenseNetwork, data

    dtype = common.dtype_of(args)
    split = data.digits(seed=args.seed, dtype=dtype)
    if args.smoke:
        split = split._replace(X_train=split.X_train[:256], y_train=split.y_train[:256])
    n = len(split.y_train)
    if not all(1 <= m <= n for m in batch_sizes) or args.batch_size > n:
        p.error(f"batch sizes must lie in [1, {n}] (the training set), got --batch-sizes "
                f"{args.batch_sizes} and --batch-size {args.batch_size}")
    model = DenseNetwork((split.X_train.shape[1], args.width, 10), "relu", "softmax", "softmax")
    params = model.init(jax.random.key(args.seed), "he", dtype)
    one, vmap_manual, vmap_autodiff = per_example_fns(model)
    tol = 1e-12 if args.dtype == "float64" else 1e-5
    folder = common.run_dir(args, "per_example_gradients")

    rows = []
    with jax.default_matmul_precision("highest"):
        for m in common.progress(batch_sizes, args, desc="batch sizes"):
            X, Y = jnp.asarray(split.X_train[:m]), jnp.asarray(split.y_train[:m])
            fns = {"loop": loop_fn(one, params, X, Y),
                   "vmap manual": lambda X=X, Y=Y: vmap_manual(params, X, Y),
                   "vmap autodiff": lambda X=X, Y=Y: vmap_autodiff(params, X, Y)}
            results = {name: fn() for name, fn in fns.items()}
            diff = max(common.tree_difference(results[name], results["vmap autodiff"])["max_rel"]
                       for name in FORMS)
            assert diff <= tol, f"m={m}: per-example gradients differ by {diff:.3e} > {tol}"
            # the batch mean of the per-example gradients is the usual gradient
            mean_diff = common.tree_difference(
                jax.tree.map(lambda g: jnp.mean(g, axis=0), results["vmap manual"]),
                jax.jit(jax.grad(model.loss))(params, X, Y))["max_rel"]
            times = common.time_interleaved(fns, args.repeats)
            for name in FORMS:
                rows.append({"m": m, "form": name, "seconds": times[name],
                             "us_per_example": times[name] / m * 1e6,
                             "speedup_vs_loop": times["loop"] / times[name],
                             "max_rel_difference": diff, "mean_vs_grad_difference": mean_diff})

    m_max = max(batch_sizes)
    X, Y = jnp.asarray(split.X_train[:m_max]), jnp.asarray(split.y_train[:m_max])
    xla = {}
    for name, fn in (("vmap manual", vmap_manual), ("vmap autodiff", vmap_autodiff)):
        compiled, _ = common.timed_compile(fn, params, X, Y)
        ops = common.hlo_ops(compiled)
        xla[name] = {**common.xla_cost(compiled), "hlo_instructions": ops["total"],
                     "by_opcode": ops["by_opcode"]}
    dp = dp_training(args, split, dtype)
    at_max = {r["form"]: r for r in rows if r["m"] == m_max}
    summary = {
        "largest_m": m_max,
        "speedup_vs_loop": {f: at_max[f]["speedup_vs_loop"] for f in FORMS[1:]},
        "manual_over_autodiff_time": at_max["vmap manual"]["seconds"]
        / at_max["vmap autodiff"]["seconds"],
        "max_rel_difference": max(r["max_rel_difference"] for r in rows),
        "mean_vs_grad_difference": max(r["mean_vs_grad_difference"] for r in rows),
        "dp_sgd": {name: r["test_accuracy"] for name, r in dp["runs"].items()},
        "privacy": {name: {"epsilon": r["epsilon"], "epsilon_rdp": r["epsilon_rdp"],
                           "delta": r["delta"]} for name, r in dp["runs"].items()},
        "median_per_example_norm_at_init": dp["median_per_example_norm_at_init"],
        "xla": {name: {k: v for k, v in r.items() if k != "by_opcode"}
                for name, r in xla.items()},
    }

    plt = common.pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for form in FORMS:
        axes[0].loglog(batch_sizes, [r["us_per_example"] for r in rows if r["form"] == form],
                       "o-", label=form)
    axes[0].set(xlabel="batch size m", ylabel="µs per example (median)",
                title="per-example gradients")
    readable_log_axes(axes[0], batch_sizes)
    axes[0].legend()
    for name, r in dp["runs"].items():
        budget = ("no privacy" if not math.isfinite(r["epsilon"]) else
                  f"(ε, δ) = ({r['epsilon']:.3g}, {r['delta']:g})")
        axes[1].plot(np.arange(1, len(r["test_accuracy_per_epoch"]) + 1),
                     r["test_accuracy_per_epoch"], "o-", ms=3, label=f"{name}: {budget}")
    axes[1].set(xlabel="epoch", ylabel="test accuracy",
                title=f"DP-SGD on digits, Poisson sampling q = {dp['sampling_probability']:.3g}")
    axes[1].xaxis.get_major_locator().set_params(integer=True)
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    common.save_figure(fig, folder, "per_example_gradients.png")
    timing_table = [{"m": m} | {f"{form} µs/example": at(rows, m, form)["us_per_example"]
                                for form in FORMS}
                    | {f"{form} speedup": at(rows, m, form)["speedup_vs_loop"]
                       for form in FORMS[1:]} for m in batch_sizes]
    dp_table = [{"run": name, "test accuracy": r["test_accuracy"],
                 "clipped fraction (last epoch)": r["clipped_fraction"][-1],
                 "mean batch": r["mean_batch_size"], "ε (PLD)": r["epsilon"],
                 "ε (RDP)": r["epsilon_rdp"], "δ": r["delta"]}
                for name, r in dp["runs"].items()]
    common.save_results(folder, args, {
        "timing": rows, "dp_sgd": dp, "xla": xla, "summary": summary,
        "tables": {"per-example gradients: µs per example and speedup over the loop":
                   timing_table, "DP-SGD on the digits, (ε, δ) by dp-accounting": dp_table}})

    print(f"64-{args.width}-10 relu network, {args.dtype}, {jax.default_backend()}: "
          f"per-example gradients, medians of {args.repeats} interleaved repeats")
    print(common.table(timing_table))
    print(f"The three forms agree (largest relative difference "
          f"{agreement(summary['max_rel_difference'])}); the mean of the per-example "
          f"gradients equals jax.grad of the mean loss to "
          f"{agreement(summary['mean_vs_grad_difference'])}.")
    print(f"XLA's estimate at m = {m_max}: " + "; ".join(
        f"{name} {r['flops']:.3g} flops, {r['bytes_accessed']:.3g} bytes, "
        f"{r['transcendentals']:.0f} transcendentals, {r['hlo_instructions']} HLO instructions"
        for name, r in xla.items()))
    print(f"\nDP-SGD, {args.epochs} epochs of {dp['steps'] // args.epochs} steps, Poisson "
          f"sampling at q = {args.batch_size}/{dp['n']} = {dp['sampling_probability']:.3g} "
          f"(expected batch {args.batch_size}), alpha {args.alpha}, {args.source} per-example "
          f"gradients (median per-example norm at init "
          f"{summary['median_per_example_norm_at_init']:.3g}):")
    print(common.table(dp_table))
    print(f"(ε, δ): dp-accounting's PLD accountant (RDP beside it, a looser bound) over the "
          f"{dp['steps']} Poisson-subsampled Gaussian steps, add-or-remove-one neighbours, "
          f"δ = {args.delta:g}" + (f" (below 1/n = {1 / dp['n']:.1e})" if args.delta < 1 / dp["n"]
                                   else f" (not below 1/n = {1 / dp['n']:.1e}: too weak)")
          + "; runs without noise have no privacy guarantee (ε = inf).")
    print(f"results: {folder}")
    return {"folder": str(folder), "summary": summary}


if __name__ == "__main__":
    sys.exit(common.run(main))
