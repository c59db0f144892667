"""What does the hand-written backward pass cost against jax.grad, once compiled?

Question: a training step (forward, gradient, update W ← W − α ∂L/∂W) is compiled by XLA
whether the gradient comes from the δ recursion or from ``jax.grad``. Do the two
programs differ in arithmetic (flops), memory traffic (bytes accessed), transcendental
functions, instruction count or time, and why?

Expected: the matrix products are the same in both (forward W A, backward Wᵀ Δ and Δ Aᵀ
per layer: 2·m·Σ n_l n_{l-1} flops each, except Wᵀ Δ^[1], which no one needs), and they
are nearly all the flops, so flops agree to within a fraction of a percent. The
differences are in the output layer and in the layout: the manual δ^[N] = softmax(z) −
e_y evaluates exp(z) once more than autodiff, which reuses the exp of the loss's
log-sum-exp (+1 transcendental per output logit); the label enters as a scatter in both
(autodiff: the transpose of ``take``; manual: 1 subtracted at each label,
``losses.delta_output_rows``) or as a one-hot comparison (the vmapped per-example form);
the matrix form keeps examples as columns, so XLA adds transposes. With the matrix form
the step times agree within the noise of a shared machine. ``grad_form="vmap"`` (the
per-example recursion, vmapped) turns the batch sum of outer products δ a^T into a
multiply-and-reduce instead of a matrix product and is slower for wide layers. In the
CNN the hand-written input gradient of a padded convolution is a 'full' convolution over
the padded input, cropped afterwards, which costs more multiply-adds than autodiff's.
The explanation printed at the end is derived from the measured numbers; on a GPU, XLA's
flop estimate leaves out the cuBLAS calls, which the printout says when it happens.

Models: dense 64-128-10 (the digits' shape) and 784-512-512-10 (MNIST's), batch 128,
softmax output; a CNN when ``jaxnn.cnn`` exists. Timing: medians of interleaved
repeats of the compiled steps (``common.time_interleaved``), compilation apart.
"""

import re

import jax
import jax.numpy as jnp
import numpy as np

from experiments import common

COLORS = {"manual (matrix)": "C0", "manual": "C0", "manual (vmap)": "C1", "autodiff": "C2"}
OPS_OF_INTEREST = ("dot", "convolution", "transpose", "exponential", "log", "scatter",
                   "gather", "fusion", "reduce", "copy", "custom-call")
WHY = {
    "transpose": "layout changes: the dense matrix form keeps examples as columns, (n_l, m); "
                 "the CNN backward puts convolution operands in canonical layouts and its "
                 "dense part materialises Δᵀ for ∂L/∂W = Δᵀ A (backprop.delta_t_a)",
    "scatter": "ŷ − e_y as a scatter: autodiff's transpose of the label lookup (take), "
               "the manual batch forms' subtraction at each label",
    "gather": "label lookups (take) of the loss",
    "exponential": "exp of the output logits (softmax in δ^[N], log-sum-exp in the loss)",
    "copy": "explicit copies, usually for a layout change",
    "fusion": "fused kernels XLA formed (a different split of the same elementwise work)",
    "dot": "matrix products",
    "convolution": "convolutions (forward, and the two gradients per layer)",
    "reduce": "sums and maxima (biases' gradients, log-sum-exp, the loss mean)",
    "custom-call": "library calls (on a GPU, cuBLAS matrix products) in place of dots",
}


_CONVOLUTION = re.compile(r"= (\w+\[[\d,]*\])\S* convolution\(.*?window=\{([^}]*)\}")


def convolutions(text: str) -> list[str]:
    """'output shape, window' of every convolution instruction of an HLO text, sorted."""
    return sorted(f"{shape} window {{{window}}}" for shape, window in _CONVOLUTION.findall(text))


def elements(shape: str) -> int:
    """Number of elements of an HLO shape such as f32[128,14,14,8]."""
    dims = shape[shape.index("[") + 1 : shape.index("]")]
    return int(np.prod([int(d) for d in dims.split(",") if d]))


def dense_matmul_flops(sizes, m: int) -> int:
    """2·m·Σ n_l n_{l-1} for each of W A (forward) and Δ Aᵀ, plus Wᵀ Δ for l ≥ 2."""
    layer = [n_in * n_out for n_in, n_out in zip(sizes[:-1], sizes[1:], strict=True)]
    return 2 * m * (2 * sum(layer) + sum(layer[1:]))


def models(args, dtype) -> list[dict]:
    """The configurations: name, model per source, example inputs and labels."""
    from jaxnn import DenseNetwork

    dense_sizes = [(64, 128, 10), (784, 512, 512, 10)]
    if args.smoke:
        dense_sizes = [(64, 32, 10)]
    out = []
    for sizes in dense_sizes:
        k_x, k_y = jax.random.split(jax.random.key(args.seed))
        X = jax.random.normal(k_x, (args.batch, sizes[0]), dtype)
        Y = jax.random.randint(k_y, (args.batch,), 0, sizes[-1])
        variants = {
            "manual (matrix)": (DenseNetwork(sizes, "relu", "softmax", "softmax", "matrix"),
                                "manual"),
            "manual (vmap)": (DenseNetwork(sizes, "relu", "softmax", "softmax", "vmap"),
                              "manual"),
            "autodiff": (DenseNetwork(sizes, "relu", "softmax", "softmax"), "autodiff"),
        }
        out.append({"name": "dense " + "-".join(map(str, sizes)), "variants": variants,
                    "X": X, "Y": Y, "matmul_flops": dense_matmul_flops(sizes, args.batch),
                    "k": sizes[-1]})
    cnn = cnn_model(args, dtype)
    if cnn is not None:
        out.append(cnn)
    return out


def cnn_model(args, dtype):
    """A small CNN on 28x28x1 images, when jaxnn.cnn exists; else None."""
    try:
        from jaxnn import cnn
    except ImportError:
        return None
    side = 8 if args.smoke else 28
    layers = (cnn.Conv(8, 3, 1, "SAME"), cnn.MaxPool(2), cnn.Conv(16, 3, 1, "SAME"),
              cnn.MaxPool(2))
    model = cnn.CNN((side, side, 1), layers, (10,), "relu", "softmax", "softmax")
    k_x, k_y = jax.random.split(jax.random.key(args.seed))
    X = jax.random.normal(k_x, (args.batch, side, side, 1), dtype)
    Y = jax.random.randint(k_y, (args.batch,), 0, 10)
    return {"name": f"cnn {side}x{side}x1 conv3x3x8-pool-conv3x3x16-pool-10", "X": X, "Y": Y,
            "variants": {"manual": (model, "manual"), "autodiff": (model, "autodiff")},
            "matmul_flops": None, "k": 10}


def stepper(compiled, params, X, Y, alpha):
    """A zero-argument function running one step on the parameters of the step before.

    The step donates its parameters on GPU and TPU (``sgd.make_step``), so each call must
    pass the ones the last call returned, never the same arrays twice.
    """
    state = [params]

    def step():
        state[0] = compiled(state[0], (), X, Y, alpha)[0]
        return state[0]

    return step


def measure(config: dict, args, dtype) -> dict:
    from jaxnn import sgd

    X, Y = config["X"], config["Y"]
    alpha = jnp.asarray(0.01, dtype)
    out, fns = {}, {}
    for name, (model, source) in config["variants"].items():
        params = model.init(jax.random.key(args.seed), "he", dtype)
        step = sgd.make_step(model, source)
        compiled, seconds = common.timed_compile(step, params, (), X, Y, alpha)
        text = compiled.as_text()
        out[name] = {"compile_seconds": seconds, **common.xla_cost(compiled),
                     "hlo": common.hlo_ops(text), "convolutions": convolutions(text)}
        fns[name] = stepper(compiled, params, X, Y, alpha)
    samples = common.time_samples(fns, args.repeats, warmup=2)
    for name in out:
        out[name]["seconds"] = float(np.median(samples[name]))
        out[name]["seconds_quartiles"] = [float(q) for q in np.percentile(samples[name],
                                                                          [25, 75])]
    return out


def explain(config: dict, result: dict, batch: int) -> list[str]:
    """Sentences comparing each manual variant with autodiff, from the numbers alone."""
    auto = result["autodiff"]
    lines = [f"{config['name']}, batch {batch}:"]
    if config["matmul_flops"]:
        share = config["matmul_flops"] / auto["flops"]
        lines.append(f"  matrix products 2·m·(2 Σ n_l n_(l-1) + Σ_(l≥2) n_l n_(l-1)) = "
                     f"{config['matmul_flops']:.4g} flops = {share:.1%} of autodiff's "
                     f"{auto['flops']:.4g}.")
        if share > 1.01:
            calls = auto["hlo"]["by_opcode"].get("custom-call", 0)
            lines.append(f"  XLA's flop estimate is below the matrix products alone: it leaves "
                         f"out work done in library calls ({calls} custom-call(s) in autodiff's "
                         "program), so flops are not comparable between programs here.")
    for name, r in result.items():
        if name == "autodiff":
            continue
        d_flops = r["flops"] - auto["flops"]
        d_trans = r["transcendentals"] - auto["transcendentals"]
        per_logit = d_trans / (batch * config["k"])
        lines.append(
            f"  {name} vs autodiff: flops {r['flops']:.4g} vs {auto['flops']:.4g} "
            f"({d_flops / auto['flops']:+.2%}); transcendentals {r['transcendentals']:.0f} vs "
            f"{auto['transcendentals']:.0f} (difference {d_trans:+.0f} = {per_logit:+.2f} per "
            f"output logit, m·k = {batch * config['k']}); bytes accessed "
            f"{r['bytes_accessed']:.4g} vs {auto['bytes_accessed']:.4g} "
            f"({r['bytes_accessed'] / auto['bytes_accessed'] - 1:+.1%}); HLO instructions "
            f"{r['hlo']['total']} vs {auto['hlo']['total']} (entry {r['hlo']['entry']} vs "
            f"{auto['hlo']['entry']}); time {r['seconds'] * 1e6:.0f} vs "
            f"{auto['seconds'] * 1e6:.0f} µs ({r['seconds'] / auto['seconds']:.2f}x).")
        if abs(per_logit - round(per_logit)) < 0.05 and round(per_logit) != 0:
            lines.append(f"    {round(per_logit):+d} transcendental per output logit: "
                         + ("the manual δ^[N] = softmax(z) − e_y computes exp(z) again, "
                            "autodiff reuses the log-sum-exp's exp." if per_logit > 0 else
                            "autodiff evaluates more exp/log per logit."))
        differing = {op: (r["hlo"]["by_opcode"].get(op, 0), auto["hlo"]["by_opcode"].get(op, 0))
                     for op in OPS_OF_INTEREST}
        differing = {op: c for op, c in differing.items() if c[0] != c[1]}
        for op, (a, b) in differing.items():
            lines.append(f"    {op}: {a} vs {b}" + (f" — {WHY[op]}" if op in WHY else ""))
        if not differing:
            lines.append("    the same count of dots, transposes, exps and fusions.")
        mine = [c for c in r["convolutions"] if c not in auto["convolutions"]]
        theirs = [c for c in auto["convolutions"] if c not in r["convolutions"]]
        for a in [c for c in mine if c.split()[0] in {t.split()[0] for t in theirs}]:
            b = next(t for t in theirs if t.split()[0] == a.split()[0])
            mine.remove(a)
            theirs.remove(b)
            lines.append(f"    same convolution output, other window: {name} {a} vs autodiff "
                         f"{b} — the input was padded before the convolution (a separate "
                         "pad, more bytes) rather than inside it.")
        for a, b in zip(mine, theirs, strict=False):
            ratio = elements(a.split()[0]) / elements(b.split()[0])
            lines.append(f"    a convolution differs: {name} {a} vs autodiff {b}: "
                         f"{ratio:.2f}x the output elements, so {ratio:.2f}x its multiply-adds"
                         + ("; a larger output with more padding: a 'full' convolution over "
                            "the padded input, cropped afterwards." if ratio > 1 else "."))
        dots, reduces = differing.get("dot"), differing.get("reduce")
        if dots and reduces and dots[0] < dots[1] and reduces[0] > reduces[1]:
            lines.append(f"    {dots[1] - dots[0]} fewer dots and {reduces[0] - reduces[1]} more "
                         "reduces: the per-example outer products δ^[l] a^[l-1]ᵀ, averaged over "
                         "the batch, were compiled as multiply-and-reduce over examples "
                         "rather than as one matrix product Δ Aᵀ"
                         + (f"; the step takes {r['seconds'] / auto['seconds']:.2f}x autodiff's "
                            f"time with {r['bytes_accessed'] / auto['bytes_accessed']:.2f}x its "
                            "bytes: such a reduction runs slower than a matrix product."
                            if r["seconds"] > 1.1 * auto["seconds"] else "."))
        same_dots = (r["hlo"]["by_opcode"].get("dot", 0) == auto["hlo"]["by_opcode"].get("dot", 0)
                     and r["hlo"]["by_opcode"].get("convolution", 0)
                     == auto["hlo"]["by_opcode"].get("convolution", 0))
        if same_dots and not (mine or theirs) and abs(d_flops) < 0.05 * auto["flops"]:
            time_ratio = r["seconds"] / auto["seconds"]
            bytes_ratio = r["bytes_accessed"] / auto["bytes_accessed"]
            follows = (time_ratio > 1) == (bytes_ratio > 1)
            lines.append("    same matrix products, flops within 5%: the arithmetic is the "
                         "same; what differs is the elementwise output layer and the layout; "
                         f"the time ratio {time_ratio:.2f} "
                         f"{'goes the way of' if follows else 'goes against'} the "
                         f"bytes-accessed ratio {bytes_ratio:.2f}.")
    return lines


def main(argv=None) -> dict:
    p = common.parser("cost_of_manual_backprop", __doc__, (
        "step_time.png (median time per compiled training step, quartiles, each model)",))
    p.add_argument("--batch", type=common.count(1), default=128,
                   help="examples per training step")
    p.add_argument("--repeats", type=common.count(1), default=21,
                   help="interleaved repeats per timing (the median is reported)")
    args = p.parse_args(argv)
    common.setup(args)
    if args.smoke:
        args.batch, args.repeats = min(args.batch, 16), 3
    dtype = common.dtype_of(args)
    run = common.Run(args, "cost_of_manual_backprop", argv)
    folder = run.folder
    configs = models(args, dtype)
    results, lines = {}, []
    with jax.default_matmul_precision("highest"):
        for config in common.progress(configs, args, desc="models"):
            run.stage = f"measuring {config['name']}"
            results[config["name"]] = measure(config, args, dtype)
            run.results["results"] = results
            lines += explain(config, results[config["name"]], args.batch)

    rows = [{"model": model, "gradient": name, "median step": r["seconds"],
             "compile": r["compile_seconds"], "flops": r["flops"],
             "bytes accessed": r["bytes_accessed"], "transcendentals": r["transcendentals"],
             "HLO instr.": r["hlo"]["total"], "entry instr.": r["hlo"]["entry"]}
            for model, result in results.items() for name, r in result.items()]
    summary = {model: {name: {"seconds": r["seconds"], "flops": r["flops"],
                              "bytes_accessed": r["bytes_accessed"],
                              "hlo_instructions": r["hlo"]["total"]}
                       for name, r in result.items()}
               for model, result in results.items()}
    for model, result in results.items():
        summary[model]["manual_over_autodiff_time"] = {
            name: r["seconds"] / result["autodiff"]["seconds"]
            for name, r in result.items() if name != "autodiff"}

    plt = common.pyplot()
    fig, axes = plt.subplots(1, len(results), figsize=(4.5 * len(results), 3.6), squeeze=False,
                             layout="constrained")
    for ax, (model, result) in zip(axes[0], results.items(), strict=True):
        names = list(result)
        medians = np.array([result[n]["seconds"] for n in names]) * 1e6
        quartiles = np.array([result[n]["seconds_quartiles"] for n in names]).T * 1e6
        ax.bar(range(len(names)), medians, color=[COLORS.get(n, "C3") for n in names],
               yerr=np.abs(quartiles - medians), capsize=4)
        ax.set_xticks(range(len(names)), names, rotation=20, fontsize=8)
        ax.set(ylabel="median µs per step (bars: quartiles)", title=model)
    fig.suptitle(f"compiled training step, batch {args.batch}, {args.dtype}, "
                 f"{jax.default_backend()}")
    common.save_figure(fig, folder, "step_time.png")
    run.finish({"results": results, "rows": rows, "explanation": lines, "summary": summary})

    print(common.table(rows, formats={"median step": "seconds", "compile": "seconds"}))
    print("\n".join(lines))
    print(f"results: {folder}")
    return {"folder": str(folder), "summary": summary}


if __name__ == "__main__":
    import sys

    sys.exit(common.run(main))
