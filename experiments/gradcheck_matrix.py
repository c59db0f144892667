"""Gradient check of every hidden activation × output/loss pair × depth, in float32 and float64.

Question: does the hand-written δ recursion agree with ``jax.grad`` and with central
finite differences for every combination the library offers (hidden relu, tanh,
sigmoid; output/loss identity+squared_error, sigmoid+logistic, softmax+softmax,
softmax+cross_entropy, sigmoid+squared_error, softmax+squared_error; depth 1 to 6), and
how large are the float32 figures, and why?

Expected: manual vs autodiff, two analytic computations of one quantity, agree to
~1e-13 in float64 and ~1e-5 element-wise in float32 (normwise ~1e-7, a few float32
eps: the element-wise figure is set by small entries of a leaf, whose absolute rounding
error is that of the leaf's large entries; where an entry is 1e-4 of its leaf's largest
or less, the element-wise figure can pass 1e-3 from rounding alone). Central differences
agree to ~1e-7 in float64 (worse, ~1e-6, for deep sigmoid networks, whose first-layer
gradients are tiny) and ~1e-3 in float32, where the step h = 1e-2 sits near the optimum
eps^(1/3) of the error eps |L| / h + h^2 |L'''| / 6 and that optimum error is what is
left.

Each combination is checked at a point away from initialisation symmetry (Xavier
weights, biases drawn from N(0, 0.1²), then ``--train-steps`` steps of gradient descent
with ``jax.grad``), float32 under ``jax.default_matmul_precision("highest")``. Any
combination above its tolerance is listed and makes ``python -m
experiments.gradcheck_matrix`` exit with status 1. Tolerances (element-wise relative
error, max over all leaves):

    float64  manual/autodiff 1e-10    fd/autodiff 1e-5  (h = 1e-5, fd floor 1e-5)
    float32  manual/autodiff 1e-3     fd/autodiff 3e-2  (h = 1e-2, fd floor 1e-2)

A manual/autodiff figure above its tolerance gets a second look: the largest difference
in each leaf divided by that leaf's largest entry. At most 1e-5 in float32 (~80 eps;
1e-13 in float64) it is rounding on an entry far smaller than its leaf (cancellation),
reported with that entry's size and not counted as a failure; above, it fails. The
finite-difference tolerances follow from the error model: with h at its default the
absolute error is ~1e-10 (float64) and ~1e-4 (float32), over the floor that is 1e-5 and
1e-2. Coordinates whose step crosses a ReLU kink or a max-pool tie are counted apart
(``kinks``), as ``jaxnn.gradcheck`` does.

CNN rows (``jaxnn.cnn.CNN``, when that module exists) check a few small convolutional
networks the same way.

Plots: heatmap_by_depth.png and heatmap_per_layer.png (dense), heatmap_cnn.png (per
layer of each CNN), on a log10 colour scale with the tolerance drawn on the colour bar,
cells above it framed red and exact zeros grey (an exact zero has no logarithm);
fd_error_vs_h.png, the finite-difference error against the step h.
"""

import sys

import jax
import jax.numpy as jnp
import numpy as np

from experiments import common

HIDDEN = ("relu", "tanh", "sigmoid")
PAIRS = (
    ("identity", "squared_error"),
    ("sigmoid", "logistic"),
    ("softmax", "softmax"),
    ("softmax", "cross_entropy"),
    ("sigmoid", "squared_error"),
    ("softmax", "squared_error"),
)
TOLERANCE = {
    "float64": {"manual/autodiff": 1e-10, "fd/autodiff": 1e-5, "leaf-scaled": 1e-13},
    "float32": {"manual/autodiff": 1e-3, "fd/autodiff": 3e-2, "leaf-scaled": 1e-5},
}
TINY32 = float(np.finfo(np.float32).tiny)
EPS = {"float32": float(np.finfo(np.float32).eps), "float64": float(np.finfo(np.float64).eps)}


def targets(rng: np.random.Generator, output: str, loss: str, m: int, k: int, dtype):
    """Targets for a pair: integer labels, probability vectors, {0, 1} or real numbers."""
    if loss == "softmax":
        return jnp.asarray(rng.integers(0, k, m), jnp.int32)
    y = rng.standard_normal((m, k))
    if output == "softmax":
        y = np.exp(y) / np.sum(np.exp(y), axis=1, keepdims=True)
    elif output == "sigmoid":
        y = (y > 0).astype(np.float64)
    return jnp.asarray(y, dtype)


def train_a_little(model, params, X, Y, steps: int, alpha: float):
    """``steps`` steps of full-batch gradient descent with jax.grad (not the code under test)."""
    if steps <= 0:
        return params

    @jax.jit
    def run(params):
        def body(p, _):
            return jax.tree.map(lambda w, g: w - alpha * g, p, jax.grad(model.loss)(p, X, Y)), None

        return jax.lax.scan(body, params, None, length=steps)[0]

    return run(params)


def dense_problem(hidden, output, loss, depth, dtype, seed, m=8, n_0=4, width=5):
    """(model, params, X, Y): ``depth`` layers, ``depth - 1`` hidden ones of ``width`` units.

    W^[l] ~ N(0, 2 / (n_l + n_{l-1})) (Xavier), b^[l] ~ N(0, 0.1²), X ~ N(0, 1), drawn
    with numpy (no compilation per shape; the initialiser is not what is checked here).
    """
    from jaxnn import DenseNetwork

    k = 3 if output == "softmax" else 2
    model = DenseNetwork((n_0,) + (width,) * (depth - 1) + (k,), hidden, output, loss)
    rng = np.random.default_rng([seed, depth])
    params = [{"W": jnp.asarray(rng.standard_normal((n_out, n_in))
                                * np.sqrt(2 / (n_in + n_out)), dtype),
               "b": jnp.asarray(0.1 * rng.standard_normal(n_out), dtype)}
              for n_in, n_out in zip(model.sizes[:-1], model.sizes[1:], strict=True)]
    X = jnp.asarray(rng.standard_normal((m, n_0)), dtype)
    return model, params, X, targets(rng, output, loss, m, k, dtype)


def cnn_configs(smoke: bool) -> list[dict]:
    """A few small convolutional networks on 8x8x2 images (``jaxnn.cnn`` layer specs).

    Covered: one and two convolutions, SAME and VALID padding, stride 2, max and average
    pooling, the lax and im2col convolutions, each hidden g and four output/loss pairs.
    """
    configs = [
        {"name": "conv3x3 SAME, maxpool2", "hidden": "relu", "pair": ("softmax", "softmax"),
         "layers": (("conv", 3, 3, 1, "SAME"), ("max_pool", 2)), "method": "lax"},
        {"name": "conv3x3 SAME, avgpool2", "hidden": "tanh",
         "pair": ("softmax", "cross_entropy"),
         "layers": (("conv", 3, 3, 1, "SAME"), ("avg_pool", 2)), "method": "lax"},
        {"name": "conv3x3, maxpool2, conv2x2", "hidden": "relu",
         "pair": ("softmax", "softmax"),
         "layers": (("conv", 3, 3, 1, "SAME"), ("max_pool", 2), ("conv", 4, 2, 1, "VALID")),
         "method": "im2col"},
        {"name": "conv3x3 stride 2, conv2x2", "hidden": "sigmoid",
         "pair": ("sigmoid", "logistic"),
         "layers": (("conv", 3, 3, 2, "SAME"), ("conv", 4, 2, 1, "VALID")), "method": "lax"},
        {"name": "conv3x3 VALID, avgpool2, conv2x2", "hidden": "tanh",
         "pair": ("identity", "squared_error"),
         "layers": (("conv", 3, 3, 1, "VALID"), ("avg_pool", 2), ("conv", 4, 2, 1, "SAME")),
         "method": "im2col"},
    ]
    return configs[:1] if smoke else configs


def cnn_problem(config: dict, dtype, seed, m=4):
    """(model, params, X, Y) for a small CNN on 8x8x2 images, or None without jaxnn.cnn."""
    try:
        from jaxnn import cnn
    except ImportError:
        return None
    output, loss = config["pair"]
    k = 3 if output == "softmax" else 2
    layers = []
    for spec in config["layers"]:
        if spec[0] == "conv":
            _, filters, kernel, stride, padding = spec
            layers.append(cnn.Conv(filters, kernel, stride, padding))
        else:
            layers.append(cnn.Pool(spec[1], None, spec[0]))
    model = cnn.CNN((8, 8, 2), tuple(layers), (6, k), config["hidden"], output, loss,
                    config["method"])
    rng = np.random.default_rng([seed, len(layers)])
    params = model.init(jax.random.key(seed), "xavier_normal", dtype)
    # biases away from 0, as in the dense problems
    params = jax.tree_util.tree_map_with_path(
        lambda path, a: a + jnp.asarray(0.1 * rng.standard_normal(a.shape), dtype)
        if jax.tree_util.keystr(path).endswith("['b']") else a, params)
    X = jnp.asarray(rng.standard_normal((m, 8, 8, 2)), dtype)
    return model, params, X, targets(rng, output, loss, m, k, dtype)


def leaf_scaled(model, params, X, Y) -> dict:
    """Manual vs autodiff with each leaf's error scaled by that leaf's largest entry.

    Returns {"leaf_scaled": max over leaves of max |m - a| / max |a|, "entry_over_leaf_max":
    |a_i| / max |a| at the entry with the largest element-wise error}. Rounding leaves
    the first near eps whatever the second; a wrong gradient does not.
    """
    with jax.default_matmul_precision("highest"):
        _, manual = jax.jit(model.manual_grad)(params, X, Y)
        autodiff = jax.jit(jax.grad(model.loss))(params, X, Y)
    worst = {"leaf_scaled": 0.0, "element_wise": -1.0, "entry_over_leaf_max": float("nan")}
    for m_leaf, a_leaf in zip(jax.tree.leaves(manual), jax.tree.leaves(autodiff), strict=True):
        m_leaf = np.asarray(m_leaf, np.float64).ravel()
        a_leaf = np.asarray(a_leaf, np.float64).ravel()
        leaf_max = float(np.max(np.abs(a_leaf), initial=0.0))
        if leaf_max == 0:
            continue
        worst["leaf_scaled"] = max(worst["leaf_scaled"],
                                   float(np.max(np.abs(m_leaf - a_leaf))) / leaf_max)
        r = np.abs(m_leaf - a_leaf) / np.maximum(np.maximum(np.abs(m_leaf), np.abs(a_leaf)),
                                                 TINY32)
        i = int(np.argmax(r))
        if r[i] > worst["element_wise"]:
            worst["element_wise"] = float(r[i])
            worst["entry_over_leaf_max"] = abs(a_leaf[i]) / leaf_max
    return worst


def check_row(model, params, X, Y, dtype_name: str, label: dict, max_coords: int,
              tolerance: dict) -> dict:
    """One gradient check as a table row, with per-layer errors for the heatmaps."""
    from jaxnn import gradcheck

    with jax.default_matmul_precision("highest"):
        report = gradcheck.check(model, params, X, Y, max_coords=max_coords)
    errors = {"manual/autodiff": report.max(), "fd/autodiff": report.max("fd_vs_autodiff"),
              "fd/manual": report.max("fd_vs_manual")}
    tol = tolerance[dtype_name]
    failed = [k for k in ("manual/autodiff", "fd/autodiff") if not errors[k] <= tol[k]]
    cancellation = None
    if "manual/autodiff" in failed:
        # a second look: is the difference rounding, large only relative to a tiny entry?
        cancellation = leaf_scaled(model, params, X, Y)
        if cancellation["leaf_scaled"] <= tol["leaf-scaled"]:
            failed.remove("manual/autodiff")
    return {
        **label, "dtype": dtype_name, **errors,
        "kinks": int(sum(report.kinks.values())), "checked": int(sum(report.checked.values())),
        "loss_value": report.loss, "ok": not failed, "failed": failed,
        "cancellation": cancellation,
        "per_layer": {"manual/autodiff": report.per_layer(),
                      "fd/autodiff": report.per_layer("fd_vs_autodiff")},
    }


def dense_grid(args, dtypes, hiddens, pairs, tolerance) -> list[dict]:
    depths = range(1, args.max_depth + 1)
    jobs = [(d, h, pair, depth) for d in dtypes for h in hiddens for pair in pairs
            for depth in depths]
    rows, by_key = [], {}
    for dtype_name, hidden, (output, loss), depth in common.progress(
            jobs, args, desc="dense gradient checks"):
        label = {"model": "dense", "hidden": hidden, "output": output, "loss": loss,
                 "depth": depth}
        key = (dtype_name, output, loss, depth)
        if depth == 1 and key in by_key:
            # no hidden layer: the hidden activation plays no part, the check is the same
            rows.append({**by_key[key], **label})
            continue
        model, params, X, Y = dense_problem(hidden, output, loss, depth,
                                            jnp.dtype(dtype_name), args.seed)
        params = train_a_little(model, params, X, Y, args.train_steps, args.alpha)
        row = check_row(model, params, X, Y, dtype_name, label, args.max_coords, tolerance)
        by_key[key] = row
        rows.append(row)
    return rows


def cnn_grid(args, dtypes, tolerance) -> list[dict]:
    rows = []
    jobs = [(d, c) for d in dtypes for c in cnn_configs(args.smoke)]
    for dtype_name, config in common.progress(jobs, args, desc="CNN gradient checks"):
        problem = cnn_problem(config, jnp.dtype(dtype_name), args.seed)
        if problem is None:
            return []
        model, params, X, Y = problem
        params = train_a_little(model, params, X, Y, args.train_steps, args.alpha)
        output, loss = config["pair"]
        label = {"model": "cnn", "hidden": config["hidden"], "output": output, "loss": loss,
                 "depth": sum(spec[0] == "conv" for spec in config["layers"]) + 2,
                 "layers": config["name"], "conv_method": config["method"]}
        rows.append(check_row(model, params, X, Y, dtype_name, label, args.max_coords,
                              tolerance))
    return rows


# ----------------------------------------------------------------- why the float32 figures


def explain_float32(seed: int, train_steps: int, alpha: float, n_coords: int = 16) -> dict:
    """Numbers behind the float32 figures, on one smooth network (tanh, softmax, depth 3).

    - forward rounding: |L32 - L64| at the same (float32-representable) parameters;
    - manual vs autodiff: element-wise max, normwise error, and how small the entry with
      the largest element-wise error is against the largest entry of its leaf; each
      float32 gradient against the float64 one;
    - finite differences: the error of central differences against h in both dtypes
      (median over the ``n_coords`` coordinates with the largest gradients), its minimum,
      eps^(1/3), and the model eps |L| / h + h^2 |L'''_i| / 6 (median over coordinates).
    """
    from jax.flatten_util import ravel_pytree

    from jaxnn import gradcheck

    model, p64, X64, Y = dense_problem("tanh", "softmax", "cross_entropy", 3, jnp.float64,
                                       seed)
    p64 = train_a_little(model, p64, X64, Y, train_steps, alpha)
    p32 = jax.tree.map(lambda a: a.astype(jnp.float32), p64)
    X32, Y32 = X64.astype(jnp.float32), Y.astype(jnp.float32)
    # the reference point is the float32 one, exactly, in float64
    p_ref = jax.tree.map(lambda a: a.astype(jnp.float64), p32)
    X_ref = X32.astype(jnp.float64)
    Y_ref = Y32.astype(jnp.float64)
    value_and_grad = jax.jit(jax.value_and_grad(model.loss))
    with jax.default_matmul_precision("highest"):
        L32, auto32 = value_and_grad(p32, X32, Y32)
        L64, auto64 = value_and_grad(p_ref, X_ref, Y_ref)
        _, manual32 = jax.jit(model.manual_grad)(p32, X32, Y32)
    L32, L64 = float(L32), float(L64)

    flat = {name: np.asarray(ravel_pytree(t)[0], np.float64)
            for name, t in (("manual32", manual32), ("auto32", auto32), ("auto64", auto64))}

    def normwise(a, b):
        return float(np.linalg.norm(a - b) / np.linalg.norm(b))

    # the leaf and entry with the largest element-wise manual/autodiff error
    worst = {"r": -1.0}
    for name, m_leaf, a_leaf in zip(gradcheck.leaf_names(p32), jax.tree.leaves(manual32),
                                    jax.tree.leaves(auto32), strict=True):
        m_leaf = np.asarray(m_leaf, np.float64).ravel()
        a_leaf = np.asarray(a_leaf, np.float64).ravel()
        # gradcheck.relative_error's formula, in numpy
        scale = np.maximum(np.maximum(np.abs(m_leaf), np.abs(a_leaf)), TINY32)
        r = np.where(m_leaf == a_leaf, 0.0, np.abs(m_leaf - a_leaf) / scale)
        i = int(np.argmax(r))
        if r[i] > worst["r"]:
            leaf_max = float(np.max(np.abs(a_leaf)))
            worst = {"r": float(r[i]), "leaf": name,
                     "entry_over_leaf_max": abs(a_leaf[i]) / leaf_max,
                     "abs_error_over_leaf_max": abs(m_leaf[i] - a_leaf[i]) / leaf_max}
    eps32 = EPS["float32"]
    manual = {
        "max_elementwise": worst["r"], "worst_leaf": worst["leaf"],
        "worst_entry_over_leaf_max": worst["entry_over_leaf_max"],
        "worst_abs_error_over_leaf_max_in_eps": worst["abs_error_over_leaf_max"] / eps32,
        "normwise": normwise(flat["manual32"], flat["auto32"]),
        "normwise_in_eps": normwise(flat["manual32"], flat["auto32"]) / eps32,
        "manual32_vs_exact_normwise": normwise(flat["manual32"], flat["auto64"]),
        "autodiff32_vs_exact_normwise": normwise(flat["auto32"], flat["auto64"]),
    }
    forward = {"L": L64, "abs_error": abs(L32 - L64),
               "rel_error_in_eps": abs(L32 - L64) / abs(L64) / eps32}

    # finite differences against h, for the coordinates with the largest gradients
    theta64, unravel64 = ravel_pytree(p_ref)
    coords = np.argsort(-np.abs(flat["auto64"]))[:n_coords]
    g = flat["auto64"][coords]

    def along(t, i, theta, X, Yt):
        return model.loss(unravel64(theta.at[i].add(t)), X, Yt)

    third_fn = jax.jit(jax.vmap(jax.grad(jax.grad(jax.grad(along))), in_axes=(None, 0, None,
                                                                             None, None)))
    third = np.asarray(third_fn(0.0, jnp.asarray(coords), theta64, X_ref, Y_ref), np.float64)
    hs = np.logspace(-9, 0, 46)
    curves = {}
    for dtype_name, (p, X, Yt) in (("float32", (p32, X32, Y32)),
                                   ("float64", (p_ref, X_ref, Y_ref))):
        theta, unravel = ravel_pytree(p)
        dtype = theta.dtype

        def fd(h, i, theta=theta, unravel=unravel, X=X, Yt=Yt, dtype=dtype):
            e = jnp.zeros_like(theta).at[i].set(h.astype(dtype))
            return (model.loss(unravel(theta + e), X, Yt)
                    - model.loss(unravel(theta - e), X, Yt)) / (2 * h.astype(dtype))

        grid = jax.jit(jax.vmap(jax.vmap(fd, in_axes=(None, 0)), in_axes=(0, None)))
        with jax.default_matmul_precision("highest"):
            quotients = np.asarray(grid(jnp.asarray(hs), jnp.asarray(coords)), np.float64)
        # (len(hs), n_coords) relative errors; the median over coordinates is the curve
        err = np.median(np.abs(quotients - g) / np.abs(g), axis=1)
        eps = EPS[dtype_name]
        model_err = np.median((eps * abs(L64) / hs[:, None] + hs[:, None] ** 2
                               * np.abs(third) / 6) / np.abs(g), axis=1)
        best = int(np.argmin(err))
        h_default = gradcheck.default_step(dtype)
        curves[dtype_name] = {
            "rel_error": err, "model": model_err,
            "best_h": float(hs[best]), "best_rel_error": float(err[best]),
            "eps_cube_root": eps ** (1 / 3),
            "predicted_best_h": float(hs[int(np.argmin(model_err))]),
            "predicted_best_rel_error": float(np.min(model_err)),
            "model_abs_error_at_default_h": float(
                eps * abs(L64) / h_default + h_default**2 * np.median(np.abs(third)) / 6),
            "rel_error_at_default_h": float(np.interp(np.log10(h_default), np.log10(hs), err)),
        }
    return {"config": "tanh hidden, softmax + cross_entropy, depth 3",
            "forward": forward, "manual_vs_autodiff": manual,
            "finite_differences": {"coordinates": coords, "gradients": g, "L": L64,
                                   "third_derivatives": third, "h": hs, **curves}}


# ------------------------------------------------------------------------------ reporting


def combo_label(row: dict) -> str:
    return f"{row['hidden']} / {row['output']}+{row['loss']}"


ZERO_COLOUR = "#bdbdbd"  # exact zeros: outside the colour map's range, labelled apart


def error_grid(dense: list[dict], labels: list[str], dtype_name: str, kind: str,
               max_depth: int, per_layer: bool) -> np.ndarray:
    """Relative errors, one row per hidden/pair label: by depth, or per layer at max_depth.

    Exact zeros stay 0 and cells without a check NaN (``draw_grid`` shows both apart).
    """
    M = np.full((len(labels), max_depth), np.nan)
    for r in dense:
        if r["dtype"] != dtype_name:
            continue
        i = labels.index(combo_label(r))
        if not per_layer:
            M[i, r["depth"] - 1] = r[kind]
        elif r["depth"] == max_depth:
            M[i, : max_depth] = list(r["per_layer"][kind].values())
    return M


def cnn_label(row: dict) -> str:
    return f"{row['layers']} ({row['conv_method']})\n{combo_label(row)}"


def cnn_layer_name(key: str) -> str:
    """"['conv'][0]" -> "conv 1"."""
    kind, index = key.replace("'", "").strip("[]").split("][")
    return f"{kind} {int(index) + 1}"


def cnn_grid_values(cnn: list[dict], dtype_name: str, kind: str):
    """(errors per CNN (rows) and layer (columns), row labels, column labels); NaN where a
    network has no such layer."""
    mine = [r for r in cnn if r["dtype"] == dtype_name]
    labels = list(dict.fromkeys(cnn_label(r) for r in cnn))
    columns = sorted({cnn_layer_name(k) for r in cnn for k in r["per_layer"][kind]},
                     key=lambda c: (c.split()[0] != "conv", int(c.split()[1])))
    M = np.full((len(labels), len(columns)), np.nan)
    for r in mine:
        for key, value in r["per_layer"][kind].items():
            M[labels.index(cnn_label(r)), columns.index(cnn_layer_name(key))] = value
    return M, labels, columns


def short(x: float) -> str:
    """1e-10, 3e-2: a tolerance as written in the docstring."""
    mantissa, exponent = f"{x:.0e}".split("e")
    return f"{mantissa}e{int(exponent)}"


def draw_grid(fig, ax, M: np.ndarray, tolerance: float, rows: list[str], columns: list[str],
              title: str, xlabel: str) -> None:
    """One heatmap of relative errors on a log10 colour scale with the tolerance marked:
    a red line on the colour bar and a red frame round every cell above it. Exact zeros
    are drawn grey with "0" in the cell, cells without a check (no such layer) white with
    "–"."""
    from matplotlib.colors import Normalize
    from matplotlib.patches import Rectangle

    positive = np.where(M > 0, M, np.nan)
    logs = np.log10(positive)
    finite = logs[np.isfinite(logs)]
    span = np.concatenate([finite, [np.log10(tolerance)]])
    norm = Normalize(np.floor(span.min() - 0.5), np.ceil(span.max() + 0.5))
    im = ax.imshow(np.ma.masked_invalid(logs), aspect="auto", cmap="viridis", norm=norm)
    for (i, j), value in np.ndenumerate(M):
        if value == 0:
            ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, color=ZERO_COLOUR))
            ax.text(j, i, "0", ha="center", va="center", fontsize=7)
        elif np.isnan(value):
            ax.text(j, i, "–", ha="center", va="center", fontsize=7, color="0.5")
        elif value > tolerance:
            ax.add_patch(Rectangle((j - 0.45, i - 0.45), 0.9, 0.9, fill=False,
                                   edgecolor="red", lw=1.5))
    ax.set_xticks(range(len(columns)), columns, fontsize=7)
    ax.set_yticks(range(len(rows)), rows, fontsize=7)
    ax.set(xlabel=xlabel, title=f"{title} (tolerance {short(tolerance)})")
    bar = fig.colorbar(im, ax=ax, label="relative error")
    low, high = int(norm.vmin), int(norm.vmax)
    step = max(1, -(-(high - low) // 5))
    ticks = list(range(low, high + 1, step))
    bar.set_ticks(ticks, labels=[f"1e{t}" for t in ticks])
    bar.ax.tick_params(labelsize=7)
    bar.ax.axhline(np.log10(tolerance), color="red", lw=2.5)


def grid_legend(fig) -> None:
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    fig.legend(handles=[
        Patch(color=ZERO_COLOUR, label="0: exactly equal (no error to take a log of)"),
        Patch(facecolor="white", edgecolor="0.6", label="–: no such layer"),
        Line2D([], [], color="red", lw=2, label="tolerance (on the colour bar)"),
        Patch(facecolor="none", edgecolor="red", label="above tolerance")],
        loc="lower center", ncol=4, fontsize=7, frameon=False)


def heatmaps(rows: list[dict], dtypes, folder, max_depth: int, tolerance: dict) -> list[str]:
    """Max error by depth and per layer of the deepest dense networks, and per layer of
    the CNNs (when any were checked). Returns the file names written."""
    plt = common.pyplot()
    dense = [r for r in rows if r["model"] == "dense"]
    cnn = [r for r in rows if r["model"] == "cnn"]
    labels = list(dict.fromkeys(combo_label(r) for r in dense))
    kinds = ("manual/autodiff", "fd/autodiff")
    depths = [str(t) for t in range(1, max_depth + 1)]
    figures = [
        ("heatmap_by_depth.png", "depth (layers)", "max relative error over all layers",
         lambda d, k: (error_grid(dense, labels, d, k, max_depth, False), labels, depths)),
        ("heatmap_per_layer.png", "layer l", f"max relative error per layer, depth {max_depth}",
         lambda d, k: (error_grid(dense, labels, d, k, max_depth, True), labels, depths)),
    ]
    if cnn:
        figures.append(("heatmap_cnn.png", "layer", "CNNs, max relative error per layer",
                        lambda d, k: cnn_grid_values(cnn, d, k)))
    written = []
    for filename, xlabel, title, grid in figures:
        n_rows = len(grid(dtypes[0], kinds[0])[1])
        per_row = 0.55 if filename == "heatmap_cnn.png" else 0.3  # two-line labels
        fig, axes = plt.subplots(len(kinds), len(dtypes), squeeze=False,
                                 figsize=(6.2 * len(dtypes), per_row * n_rows * 2 + 3.4))
        for a, kind in enumerate(kinds):
            for b, dtype_name in enumerate(dtypes):
                M, row_labels, columns = grid(dtype_name, kind)
                draw_grid(fig, axes[a][b], M, tolerance[dtype_name][kind], row_labels,
                          columns, f"{dtype_name}: {kind}", xlabel)
        fig.suptitle(f"Gradient check, {title}")
        fig.tight_layout(rect=(0, 0.05, 1, 1))
        grid_legend(fig)
        common.save_figure(fig, folder, filename)
        written.append(filename)
    return written


def plot_fd_curve(explain: dict, folder) -> None:
    plt = common.pyplot()
    fd = explain["finite_differences"]
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for dtype_name, color in (("float32", "C0"), ("float64", "C1")):
        c = fd[dtype_name]
        ax.loglog(fd["h"], c["rel_error"], "o-", ms=3, color=color, label=f"{dtype_name}")
        ax.loglog(fd["h"], c["model"], "--", color=color, alpha=0.6,
                  label=f"{dtype_name} model eps|L|/h + h²|L'''|/6")
        ax.axvline(c["eps_cube_root"], color=color, ls=":", alpha=0.8)
    ax.set(xlabel="step h", ylabel="relative error of the central difference",
           title="finite differences vs h (dotted: eps^(1/3))")
    ax.legend(fontsize=7)
    common.save_figure(fig, folder, "fd_error_vs_h.png")


def worst_fd_coordinate(row: dict, seed: int, train_steps: int, alpha: float) -> dict:
    """For the dense float32 row with the largest fd/autodiff error: its worst coordinate's
    absolute error at h = 1e-2 and h = 1e-2 / 3, against the float64 gradient.

    A ratio near 9 says truncation (error ∝ h²), near 1/3 rounding (error ∝ 1/h).
    """
    from jax.flatten_util import ravel_pytree

    from jaxnn import gradcheck

    model, p64, X64, Y = dense_problem(row["hidden"], row["output"], row["loss"], row["depth"],
                                       jnp.float64, seed)
    p64 = train_a_little(model, p64, X64, Y, train_steps, alpha)
    p32 = jax.tree.map(lambda a: a.astype(jnp.float32), p64)
    X32 = X64.astype(jnp.float32)
    Y32 = Y.astype(jnp.float32) if jnp.issubdtype(Y.dtype, jnp.floating) else Y
    exact_tree = jax.jit(jax.grad(model.loss))(
        jax.tree.map(lambda a: a.astype(jnp.float64), p32), X32.astype(jnp.float64),
        Y32.astype(jnp.float64) if jnp.issubdtype(Y32.dtype, jnp.floating) else Y32)
    exact = np.asarray(ravel_pytree(exact_tree)[0])
    errors = {}
    with jax.default_matmul_precision("highest"):
        for h in (1e-2, 1e-2 / 3):
            idx, q, _ = gradcheck.finite_differences(lambda p: model.loss(p, X32, Y32), p32, h=h)
            errors[h] = np.abs(np.asarray(q, np.float64) - exact[idx])
    scaled = errors[1e-2] / np.maximum(np.abs(exact[idx]), 1e-2)
    i = int(np.argmax(scaled))
    return {"coordinate": int(idx[i]), "gradient": float(exact[idx[i]]),
            "abs_error_h": float(errors[1e-2][i]), "abs_error_h_over_3": float(errors[1e-2 / 3][i]),
            "ratio": float(errors[1e-2][i] / max(errors[1e-2 / 3][i], 1e-30))}


def explanation_text(explain: dict, rows: list[dict]) -> list[str]:
    f, m, fd = explain["forward"], explain["manual_vs_autodiff"], explain["finite_differences"]
    f32, f64 = fd["float32"], fd["float64"]
    rows32 = [r for r in rows if r["dtype"] == "float32" and r["model"] == "dense"]
    worst = max(rows32, key=lambda r: r["fd/autodiff"]) if rows32 else None
    lines = [
        f"Why the float32 figures ({explain['config']}):",
        f"- forward pass: L = {f['L']:.6g}; float32 computes it with an error of "
        f"{f['abs_error']:.2e} = {f['rel_error_in_eps']:.2f} eps32 relative.",
        f"- manual vs autodiff: largest element-wise error {m['max_elementwise']:.2e} "
        f"(leaf {m['worst_leaf']}), on an entry {m['worst_entry_over_leaf_max']:.2e} times "
        f"the largest entry of its leaf; its absolute error is "
        f"{m['worst_abs_error_over_leaf_max_in_eps']:.2f} eps32 of that largest entry. "
        f"Normwise the two agree to {m['normwise']:.2e} = {m['normwise_in_eps']:.2f} eps32, "
        f"and each is as close to the float64 gradient (manual "
        f"{m['manual32_vs_exact_normwise']:.2e}, autodiff "
        f"{m['autodiff32_vs_exact_normwise']:.2e}): neither is wrong, both round.",
        f"- finite differences (median over {len(fd['coordinates'])} coordinates, median "
        f"|∂L/∂θ| = {np.median(np.abs(fd['gradients'])):.3g}, median |L'''| = "
        f"{np.median(np.abs(fd['third_derivatives'])):.3g}): the error is smallest at h = "
        f"{f32['best_h']:.1e} in float32 ({f32['best_rel_error']:.1e}; eps^(1/3) = "
        f"{f32['eps_cube_root']:.1e}; optimum of the model eps|L|/h + h²|L'''|/6: "
        f"{f32['predicted_best_h']:.1e}) and at h = {f64['best_h']:.1e} in float64 "
        f"({f64['best_rel_error']:.1e}; eps^(1/3) = {f64['eps_cube_root']:.1e}, model "
        f"{f64['predicted_best_h']:.1e}). At the default steps the error is "
        f"{f32['rel_error_at_default_h']:.1e} (float32, h = 1e-2) and "
        f"{f64['rel_error_at_default_h']:.1e} (float64, h = 1e-5); below the optimum, "
        f"rounding of L divided by h grows as 1/h.",
        f"- at h = 1e-2 the model puts the absolute error of a float32 central difference at "
        f"eps|L|/h + h²|L'''|/6 = {f32['model_abs_error_at_default_h']:.1e} on this "
        f"network; over the fd floor 1e-2 (the scale used for gradients smaller than it) "
        f"that is a relative error of up to {f32['model_abs_error_at_default_h'] / 1e-2:.1e}."
        + ("" if worst is None else
           f" The grid's largest float32 fd/autodiff error, {worst['fd/autodiff']:.2e}, is on "
           f"{worst['model']} {worst['hidden']} {worst['output']}+{worst['loss']} depth "
           f"{worst['depth']} (L = {worst['loss_value']:.3g}; rounding alone, eps|L|/h, "
           f"gives {EPS['float32'] * abs(worst['loss_value']) / 1e-2:.1e} absolute)."),
    ]
    w = explain.get("worst_fd")
    if w is not None:
        cause = ("truncation, error ∝ h²" if w["ratio"] > 3 else
                 "rounding, error ∝ 1/h" if w["ratio"] < 1 else "both")
        lines.append(
            f"- its worst coordinate ({w['coordinate']}, ∂L/∂θ = {w['gradient']:.3g}) has an "
            f"absolute error {w['abs_error_h']:.2e} at h = 1e-2 and {w['abs_error_h_over_3']:.2e}"
            f" at h = 1e-2/3: a ratio of {w['ratio']:.1f} (9 for truncation, 1/3 for "
            f"rounding), so {cause}.")
    return lines


def main(argv=None) -> dict:
    p = common.parser("gradcheck_matrix", __doc__)
    p.add_argument("--dtypes", default="float32,float64",
                   help="comma-separated dtypes to check (float64 turns on jax_enable_x64); "
                        "this script checks every dtype listed here and ignores --dtype")
    p.add_argument("--max-depth", type=int, default=6, help="depths 1 .. max-depth")
    p.add_argument("--train-steps", type=int, default=5,
                   help="gradient-descent steps (jax.grad) before each check")
    p.add_argument("--alpha", type=float, default=0.1, help="learning rate of those steps")
    p.add_argument("--max-coords", type=int, default=2000,
                   help="finite-difference coordinates per check (all when fewer)")
    p.add_argument("--tolerance-scale", type=float, default=1.0,
                   help="multiply every tolerance (a tiny value makes every check fail)")
    p.add_argument("--no-cnn", action="store_true", help="skip the CNN rows")
    p.epilog = ("Writes runs/gradcheck_matrix/<run>/: results.json, heatmap_by_depth.png, "
                "heatmap_per_layer.png, heatmap_cnn.png, fd_error_vs_h.png. Exits with "
                "status 1 when a combination is above its tolerance.")
    args = p.parse_args(argv)
    common.setup(args)
    dtypes = [d.strip() for d in args.dtypes.split(",") if d.strip()]
    if not dtypes or any(d not in TOLERANCE for d in dtypes):
        p.error(f"--dtypes must name some of {sorted(TOLERANCE)}, got {args.dtypes!r}")
    if "float64" in dtypes:
        jax.config.update("jax_enable_x64", True)
    if args.smoke:
        args.max_depth = min(args.max_depth, 2)
    if args.max_depth < 1:
        p.error("--max-depth must be at least 1")
    hiddens, pairs = HIDDEN, PAIRS
    if args.smoke:
        hiddens, pairs, args.train_steps = ("tanh",), (("softmax", "cross_entropy"),), 1
    tolerance = {d: {k: v * args.tolerance_scale for k, v in TOLERANCE[d].items()}
                 for d in dtypes}
    folder = common.run_dir(args, "gradcheck_matrix")
    with common.Timer() as t_dense:
        rows = dense_grid(args, dtypes, hiddens, pairs, tolerance)
    with common.Timer() as t_cnn:
        cnn_rows = [] if args.no_cnn else cnn_grid(args, dtypes, tolerance)
    rows += cnn_rows
    explain = explain_float32(args.seed, args.train_steps, args.alpha) if (
        "float32" in dtypes and jax.config.jax_enable_x64) else None
    dense32 = [r for r in rows if r["dtype"] == "float32" and r["model"] == "dense"]
    if explain is not None and dense32:
        explain["worst_fd"] = worst_fd_coordinate(max(dense32, key=lambda r: r["fd/autodiff"]),
                                                  args.seed, args.train_steps, args.alpha)

    heatmaps(rows, dtypes, folder, args.max_depth, tolerance)
    if explain is not None:
        plot_fd_curve(explain, folder)
    failures = [{k: r[k] for k in ("model", "dtype", "hidden", "output", "loss", "depth",
                                   "manual/autodiff", "fd/autodiff", "failed")}
                for r in rows if not r["ok"]]
    cancellations = [{k: r[k] for k in ("model", "dtype", "hidden", "output", "loss", "depth",
                                        "manual/autodiff")}
                     | {"leaf-scaled": r["cancellation"]["leaf_scaled"],
                        "entry / leaf max": r["cancellation"]["entry_over_leaf_max"]}
                     for r in rows if r["cancellation"] is not None and r["ok"]]
    summary = {
        "checks": len(rows),
        "failures": len(failures),
        "cancellations": len(cancellations),
        "cnn_checks": len(cnn_rows),
        "cnn_available": bool(cnn_rows),
        "seconds": {"dense": t_dense.seconds, "cnn": t_cnn.seconds},
        "tolerance": tolerance,
    }
    for d in dtypes:
        mine = [r for r in rows if r["dtype"] == d]
        summary[d] = {k: max((r[k] for r in mine), default=0.0)
                      for k in ("manual/autodiff", "fd/autodiff", "fd/manual")}
        summary[d]["kinks"] = sum(r["kinks"] for r in mine)
    if explain is not None:
        summary["float32_explained"] = {
            "forward_rel_error_in_eps": explain["forward"]["rel_error_in_eps"],
            "manual_vs_autodiff_normwise_in_eps":
                explain["manual_vs_autodiff"]["normwise_in_eps"],
            "fd_best_h": {d: explain["finite_differences"][d]["best_h"]
                          for d in ("float32", "float64")},
            "eps_cube_root": {d: explain["finite_differences"][d]["eps_cube_root"]
                              for d in ("float32", "float64")},
        }
    # one line per (model, dtype, hidden, pair): the worst depth
    grouped: dict[tuple, dict] = {}
    for r in rows:
        key = (r["model"], r["dtype"], r["hidden"], f"{r['output']}+{r['loss']}")
        g = grouped.setdefault(key, {"model": key[0], "dtype": key[1], "hidden": key[2],
                                     "output+loss": key[3], "depths": [],
                                     "max manual/autodiff": 0.0, "max fd/autodiff": 0.0,
                                     "kinks": 0, "ok": True})
        g["depths"].append(r["depth"])
        g["max manual/autodiff"] = max(g["max manual/autodiff"], r["manual/autodiff"])
        g["max fd/autodiff"] = max(g["max fd/autodiff"], r["fd/autodiff"])
        g["kinks"] += r["kinks"]
        g["ok"] = g["ok"] and r["ok"]
    for g in grouped.values():
        g["depths"] = f"{min(g['depths'])}-{max(g['depths'])}"
    tables = {"checks: the worst depth of each combination": list(grouped.values())}
    if cancellations:
        tables["rounding on entries far below their leaf's largest (not failures)"] = (
            cancellations)
    if failures:
        tables["above tolerance"] = failures
    common.save_results(folder, args, {"rows": rows, "failures": failures,
                                       "cancellations": cancellations, "summary": summary,
                                       "explanation": explain, "tables": tables})

    print(f"Gradient checks: {len(rows)} combinations ({len(cnn_rows)} CNN); tolerances "
          + "; ".join(f"{d}: {t}" for d, t in tolerance.items()))
    print(common.table(list(grouped.values())))
    if not cnn_rows and not args.no_cnn:
        print("(no CNN rows: jaxnn.cnn is not available)")
    if explain is not None:
        print("\n".join(explanation_text(explain, rows)))
    if cancellations:
        print(f"\n{len(cancellations)} combination(s) above the element-wise manual/autodiff "
              "tolerance from rounding on an entry far below its leaf's largest (difference "
              "over the leaf's largest entry within the leaf-scaled tolerance; not failures):")
        print(common.table(cancellations))
    if failures:
        print(f"\n{len(failures)} combinations above tolerance:")
        print(common.table(failures))
    else:
        print("\nEvery combination is within its tolerance.")
    print(f"results: {folder}")
    return {"folder": str(folder), "summary": summary, "failures": failures}


if __name__ == "__main__":
    sys.exit(common.run(main, status=lambda result: 1 if result["failures"] else 0))
