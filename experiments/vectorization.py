"""Vectorization: a Python loop over examples vs lax.map vs vmap vs the matrix form.

Question (the notes: "to compute a^[1] = g(z^[1]) without a loop, we need vectorized
libraries"; then Z^[l] = W^[l] A^[l-1] + b^[l] with the examples as the columns of A):
what does it cost to process m examples one at a time, and what does vectorizing save,
for the forward pass and for the hand-written backward pass (mean gradient)?

Four forms that must give the same numbers (asserted):

    loop     a Python loop calling the compiled one-example function m times
    lax.map  the same one-example function, looped inside one compiled program
    vmap     jax.vmap of the one-example function (``dense.forward_batch``,
             ``backprop.grad_vmap``)
    matrix   the notes' matrix form, examples as columns (``dense.forward_matrix`` on
             X of shape (n_0, m), ``backprop.grad_matrix``)

Expected: the loop costs a roughly constant time per example (one dispatch of a small
program each, tens of microseconds on a CPU), so its time per example stays flat as m
grows; lax.map removes the dispatch but still runs matrix-vector products one example at
a time (and its backward stores every example's gradient before the mean); vmap and
the matrix form run one matrix-matrix product per layer, and their time per example
falls with m until the arithmetic dominates, one to two orders of magnitude below the
loop's at m = 1024. The matrix form is as fast as vmap or faster, most in the backward
pass, where vmap sums per-example outer products and the matrix form computes Δ Aᵀ.
Compilation (reported apart) is paid once per batch shape for the compiled forms and
once in all for the loop's one-example function.

Timing: medians of interleaved repeats in one process (``common.time_interleaved``),
after a warm-up call; compilation measured separately with ``lower().compile()``.
"""

import sys
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from experiments import common

FORMS = ("loop", "lax.map", "vmap", "matrix")


def forward_fns(params, X, hidden, output):
    """{form: (zero-argument function returning ŷ as (m, n_N), compile seconds)}."""
    from jaxnn import dense

    one = jax.jit(partial(dense.forward, hidden=hidden, output=output))
    one_c, t_one = common.timed_compile(one, params, X[0])
    rows = [X[i] for i in range(X.shape[0])]
    XT = jnp.asarray(X.T)

    mapped = jax.jit(lambda p, X: jax.lax.map(lambda x: dense.forward(p, x, hidden, output), X))
    batch = jax.jit(partial(dense.forward_batch, hidden=hidden, output=output))
    matrix = jax.jit(partial(dense.forward_matrix, hidden=hidden, output=output))
    mapped_c, t_map = common.timed_compile(mapped, params, X)
    batch_c, t_batch = common.timed_compile(batch, params, X)
    matrix_c, t_matrix = common.timed_compile(matrix, params, XT)
    return {
        "loop": (lambda: jnp.stack([one_c(params, x) for x in rows]), t_one),
        "lax.map": (lambda: mapped_c(params, X), t_map),
        "vmap": (lambda: batch_c(params, X), t_batch),
        # the matrix form returns (n_N, m); the transpose is only for the comparison
        "matrix": (lambda: matrix_c(params, XT), t_matrix),
    }


def backward_fns(params, X, Y, hidden, output, loss):
    """{form: (function returning (mean loss, mean gradient), compile seconds)}."""
    from jaxnn import backprop

    one = jax.jit(partial(backprop.grad_example, hidden=hidden, output=output, loss=loss))
    one_c, t_one = common.timed_compile(one, params, X[0], Y[0])
    rows = [(X[i], Y[i]) for i in range(X.shape[0])]

    def loop():
        results = [one_c(params, x, y) for x, y in rows]
        losses_, grads = zip(*results, strict=True)
        mean = jax.tree.map(lambda *g: jnp.mean(jnp.stack(g), axis=0), *grads)
        return jnp.mean(jnp.stack(losses_)), mean

    def mapped(p, X, Y):
        per_loss, per_grads = jax.lax.map(
            lambda xy: backprop.grad_example(p, xy[0], xy[1], hidden, output, loss), (X, Y))
        return jnp.mean(per_loss), jax.tree.map(lambda g: jnp.mean(g, axis=0), per_grads)

    mapped_c, t_map = common.timed_compile(jax.jit(mapped), params, X, Y)
    vmap_c, t_vmap = common.timed_compile(
        jax.jit(partial(backprop.grad_vmap, hidden=hidden, output=output, loss=loss)),
        params, X, Y)
    matrix_c, t_matrix = common.timed_compile(
        jax.jit(partial(backprop.grad_matrix, hidden=hidden, output=output, loss=loss)),
        params, X, Y)
    return {
        "loop": (loop, t_one),
        "lax.map": (lambda: mapped_c(params, X, Y), t_map),
        "vmap": (lambda: vmap_c(params, X, Y), t_vmap),
        "matrix": (lambda: matrix_c(params, X, Y), t_matrix),
    }


def largest_difference(results: dict, reference: str = "matrix") -> float:
    """Largest |a - b| / max|b| over leaves between each form's result and the reference."""
    ref = jax.tree.leaves(results[reference])
    worst = 0.0
    for value in results.values():
        for a, b in zip(jax.tree.leaves(value), ref, strict=True):
            a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
            scale = max(float(np.max(np.abs(b))), np.finfo(np.float64).tiny)
            worst = max(worst, float(np.max(np.abs(a - b))) / scale)
    return worst


def readable_log_axes(ax, batch_sizes) -> None:
    """Ticks at the batch sizes on x, and at 1, 2, 5 × 10^k on y, as plain numbers."""
    from matplotlib.ticker import FuncFormatter, LogLocator

    ax.minorticks_off()
    ax.set_xticks(batch_sizes, [str(m) for m in batch_sizes])
    ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))


def grid_tables(rows: list[dict]) -> dict[str, list[dict]]:
    """The printed tables: µs per example as a batch size × form grid for each direction
    (one row per m, one column per form), and compile seconds at the largest m."""
    cell = {(r["direction"], r["m"], r["form"]): r for r in rows}
    batch_sizes = sorted({r["m"] for r in rows})
    m_max = batch_sizes[-1]
    return {
        "forward: µs per example": [
            {"m": m} | {form: cell["forward", m, form]["us_per_example"] for form in FORMS}
            for m in batch_sizes],
        "backward (mean gradient): µs per example": [
            {"m": m} | {form: cell["backward", m, form]["us_per_example"] for form in FORMS}
            for m in batch_sizes],
        f"compile seconds at m = {m_max}": [
            {"direction": d} | {form: cell[d, m_max, form]["compile_seconds"] for form in FORMS}
            for d in ("forward", "backward")],
    }


def main(argv=None) -> dict:
    p = common.parser("vectorization", __doc__)
    p.add_argument("--sizes", default="64,128,128,10", help="layer sizes n_0,...,n_N")
    p.add_argument("--hidden", choices=("relu", "tanh", "sigmoid"), default="relu",
                   help="activation g of the hidden layers")
    p.add_argument("--batch-sizes", default="1,4,16,64,256,1024",
                   help="m values (the digits training set has 1,438 examples)")
    p.add_argument("--repeats", type=int, default=9, help="interleaved repeats per timing")
    p.epilog = "Writes runs/vectorization/<run>/: results.json and time_per_example.png."
    args = p.parse_args(argv)
    try:
        sizes = tuple(int(s) for s in args.sizes.split(","))
        batch_sizes = [int(s) for s in args.batch_sizes.split(",")]
    except ValueError:
        p.error(f"--sizes and --batch-sizes must be comma-separated integers, got "
                f"{args.sizes!r} and {args.batch_sizes!r}")
    if len(sizes) < 2 or min(sizes) < 1 or args.repeats < 1:
        p.error(f"--sizes needs at least two sizes >= 1 and --repeats must be >= 1, got "
                f"{args.sizes!r} and {args.repeats}")
    common.setup(args)
    if args.smoke:
        batch_sizes, args.repeats = [8], 2
    from jaxnn import DenseNetwork, data

    dtype = common.dtype_of(args)
    split = data.digits(seed=args.seed, dtype=dtype)
    if sizes[0] != split.X_train.shape[1] or sizes[-1] != 10:
        p.error(f"--sizes must start with {split.X_train.shape[1]} and end with 10 (digits)")
    if max(batch_sizes) > len(split.y_train) or min(batch_sizes) < 1:
        p.error(f"batch sizes must lie in [1, {len(split.y_train)}]")
    model = DenseNetwork(sizes, args.hidden, "softmax", "softmax")
    params = model.init(jax.random.key(args.seed), "he", dtype)
    tol = 1e-12 if args.dtype == "float64" else 1e-5
    folder = common.run_dir(args, "vectorization")

    rows = []
    with jax.default_matmul_precision("highest"):
        for m in common.progress(batch_sizes, args, desc="batch sizes"):
            X, Y = jnp.asarray(split.X_train[:m]), jnp.asarray(split.y_train[:m])
            for direction, fns in (("forward", forward_fns(params, X, args.hidden, "softmax")),
                                   ("backward", backward_fns(params, X, Y, args.hidden,
                                                             "softmax", "softmax"))):
                results = {name: fn() for name, (fn, _) in fns.items()}
                if direction == "forward":
                    results["matrix"] = results["matrix"].T
                diff = largest_difference(results)
                assert diff <= tol, f"{direction}, m={m}: forms differ by {diff:.3e} > {tol}"
                times = common.time_interleaved({name: fn for name, (fn, _) in fns.items()},
                                                args.repeats)
                for name, (_, compile_s) in fns.items():
                    rows.append({"direction": direction, "m": m, "form": name,
                                 "seconds": times[name], "us_per_example": times[name] / m * 1e6,
                                 "compile_seconds": compile_s, "max_rel_difference": diff})

    def lookup(direction, m, form):
        return next(r for r in rows if (r["direction"], r["m"], r["form"]) == (direction, m, form))

    m_max = max(batch_sizes)
    summary = {"largest_m": m_max, "max_rel_difference": max(r["max_rel_difference"] for r in rows)}
    for direction in ("forward", "backward"):
        loop = lookup(direction, m_max, "loop")["seconds"]
        summary[direction] = {
            f"speedup_vs_loop_{form}": loop / lookup(direction, m_max, form)["seconds"]
            for form in FORMS[1:]}
        summary[direction]["us_per_example"] = {
            form: lookup(direction, m_max, form)["us_per_example"] for form in FORMS}
        summary[direction]["compile_seconds"] = {
            form: lookup(direction, m_max, form)["compile_seconds"] for form in FORMS}

    plt = common.pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharey=True)
    for ax, direction in zip(axes, ("forward", "backward"), strict=True):
        for form in FORMS:
            ax.loglog(batch_sizes, [lookup(direction, m, form)["us_per_example"]
                                    for m in batch_sizes], "o-", label=form)
        readable_log_axes(ax, batch_sizes)
        ax.set(xlabel="batch size m", title=f"{direction}"
               + (" (manual δ recursion, mean gradient)" if direction == "backward" else ""))
    axes[0].set_ylabel("µs per example (median)")
    axes[0].legend()
    fig.suptitle(f"{'-'.join(map(str, sizes))} {args.hidden} network, {args.dtype}, "
                 f"{jax.default_backend()}")
    fig.tight_layout()
    common.save_figure(fig, folder, "time_per_example.png")
    tables = grid_tables(rows)
    common.save_results(folder, args, {"rows": rows, "summary": summary, "tables": tables})

    print(f"{'-'.join(map(str, sizes))} {args.hidden} network, softmax output, {args.dtype}, "
          f"{jax.default_backend()}; medians of {args.repeats} interleaved repeats")
    for title, grid in tables.items():
        print(f"\n{title}" + ("" if title.startswith("compile") else
                              " (one row per batch size m, one column per form)"))
        print(common.table(grid))
    worst = summary["max_rel_difference"]
    print("\nAll four forms agree (largest relative difference "
          + ("0: identical)." if worst == 0 else f"{worst:.2e})."))
    for direction in ("forward", "backward"):
        s = summary[direction]
        print(f"{direction}, m = {m_max}: " + ", ".join(
            f"{form} {s[f'speedup_vs_loop_{form}']:.1f}x" for form in FORMS[1:])
            + " faster than the Python loop")
    print(f"results: {folder}")
    return {"folder": str(folder), "summary": summary}


if __name__ == "__main__":
    sys.exit(common.run(main))
