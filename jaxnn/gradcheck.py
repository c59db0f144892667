"""Gradient checking: manual δ backprop vs ``jax.grad`` vs central finite differences.

Relative error, element-wise, for two gradients a and b:

    r = |a - b| / max(|a|, |b|, floor)

and r = 0 where a == b (in particular where both are exactly 0, which ReLU makes
common). ``floor`` keeps entries that are zero up to rounding from dominating:
manual vs autodiff are two analytic computations and use the dtype's smallest
normal number (so any difference counts); finite differences carry an absolute
error of about h^2 |f'''| + eps |f| / h and are compared with floor = ``fd_floor``.
The report gives the maximum of r per leaf (a W or b of one layer) and per layer.

Central differences, one coordinate θ_i at a time:

    ∂L/∂θ_i ≈ (L(θ + h e_i) - L(θ - h e_i)) / 2h

with h = 1e-5 in float64 (1e-2 in float32, where rounding of L dominates sooner).
Where the two evaluations see a different activation pattern (a ReLU's z^[l] changes
sign, a max-pool's argmax moves) the step crosses a kink and the difference quotient
is not a derivative there: such coordinates are detected through the model's
``kink_pattern`` and reported apart, never counted as errors and never a reason to
loosen the tolerance for the rest.
"""

from dataclasses import dataclass, field

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree
from jax.typing import ArrayLike


def max_abs(x: ArrayLike) -> jax.Array:
    """max |x| (0 for an empty x), ∞ when x holds a NaN.

    The NaN is looked for apart: XLA's CPU backend drops NaN from a max over more than a
    few thousand numbers.
    """
    return _max_abs(jnp.asarray(x))


@jax.jit  # one compiled program per shape, not one per operation
def _max_abs(x):
    return jnp.where(jnp.any(jnp.isnan(x)), jnp.inf, jnp.max(jnp.abs(x), initial=0.0))


def relative_error(a: ArrayLike, b: ArrayLike, floor: float | None = None) -> jax.Array:
    """|a - b| / max(|a|, |b|, floor), element-wise; 0 where a == b.

    ``floor`` defaults to the smallest normal number of the dtype.
    """
    a, b = jnp.asarray(a), jnp.asarray(b)
    if a.shape != b.shape:
        raise ValueError(f"cannot compare shapes {a.shape} and {b.shape}")
    if floor is None:
        floor = float(jnp.finfo(jnp.result_type(a, b)).tiny)
    return _relative_error(a, b, floor)


@jax.jit
def _relative_error(a, b, floor):
    scale = jnp.maximum(jnp.maximum(jnp.abs(a), jnp.abs(b)), floor)
    return jnp.where(a == b, 0.0, jnp.abs(a - b) / scale)


def leaf_names(tree) -> list[str]:
    """Readable names of the leaves, in tree order: ``[0]['W']``, ``['conv'][1]['b']``."""
    paths, _ = jax.tree_util.tree_flatten_with_path(tree)
    return [jax.tree_util.keystr(path) for path, _ in paths]


def layer_of(name: str) -> str:
    """The layer part of a leaf name: everything but the last key."""
    return name[: name.rfind("[")] or name


def compare_trees(a, b, floor: float | None = None) -> dict[str, float]:
    """Max relative error per leaf of two pytrees of one structure, keyed by leaf name."""
    if jax.tree.structure(a) != jax.tree.structure(b):
        raise ValueError(
            f"trees differ in structure: {jax.tree.structure(a)} vs {jax.tree.structure(b)}"
        )
    # max_abs, not jnp.max: a NaN must count as an infinite error
    errors = [float(max_abs(relative_error(x, y, floor)))
              for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)]
    return dict(zip(leaf_names(a), errors, strict=True))


def compare_trees_scaled(a, b) -> dict[str, float]:
    """Per leaf, max |a - b| / max |b|: the difference relative to the leaf's largest entry.

    Unlike the element-wise error this does not single out entries that are zero up to
    rounding; in float32 it separates rounding (~1e-7) from a wrong formula (~1).
    """
    names = leaf_names(a)
    out = {}
    for name, x, y in zip(names, jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        scale, diff = float(max_abs(y)), float(max_abs(jnp.asarray(x) - jnp.asarray(y)))
        if diff == 0:
            out[name] = 0.0
        else:  # a NaN or ∞ in either leaf makes diff ∞, and so the error
            out[name] = diff / scale if 0 < scale < float("inf") else float("inf")
    return out


def per_layer(errors: dict[str, float]) -> dict[str, float]:
    """Max of per-leaf errors grouped by layer."""
    out: dict[str, float] = {}
    for name, e in errors.items():
        key = layer_of(name)
        out[key] = max(out.get(key, 0.0), e)
    return out


def default_step(dtype) -> float:
    """h for central differences: 1e-5 in float64, 1e-2 in float32 (about eps^(1/3))."""
    return 1e-5 if jnp.dtype(dtype) == jnp.float64 else 1e-2


def finite_differences(
    loss_fn,
    params,
    *,
    h: float | None = None,
    max_coords: int | None = None,
    key: jax.Array | None = None,
    pattern_fn=None,
    chunk: int = 256,
):
    """Central differences of the scalar ``loss_fn(params)`` on chosen coordinates.

    All coordinates when there are at most ``max_coords`` (or max_coords is None),
    otherwise a seeded random subset of ``max_coords`` drawn with ``key``.

    Returns (indices, fd, kinks): flat coordinate indices (into ``ravel_pytree``
    order), the difference quotients, and a boolean per coordinate that is True where
    ``pattern_fn(params)`` (a pytree of booleans or ints) differs between θ - h e_i and
    θ + h e_i (a kink was crossed; always False without pattern_fn).
    """
    theta, unravel = ravel_pytree(params)
    n = theta.size
    if h is None:
        h = default_step(theta.dtype)
    if max_coords is None or n <= max_coords:
        indices = np.arange(n)
    else:
        if key is None:
            raise ValueError("a jax.random key is needed to sample coordinates")
        indices = np.sort(np.asarray(jax.random.choice(key, n, (max_coords,), replace=False)))

    def one(i):
        e = jnp.zeros_like(theta).at[i].set(h)
        plus, minus = unravel(theta + e), unravel(theta - e)
        fd = (loss_fn(plus) - loss_fn(minus)) / (2 * h)
        if pattern_fn is None:
            return fd, jnp.array(False)
        differs = jax.tree.map(lambda p, q: jnp.any(p != q), pattern_fn(plus), pattern_fn(minus))
        return fd, jnp.any(jnp.array(jax.tree.leaves(differs) or [False]))

    batched = jax.jit(jax.vmap(one))
    fds, kinks = [], []
    for start in range(0, len(indices), chunk):
        fd, kink = batched(jnp.asarray(indices[start : start + chunk]))
        fds.append(np.asarray(fd))
        kinks.append(np.asarray(kink))
    return indices, np.concatenate(fds), np.concatenate(kinks)


@dataclass
class Report:
    """Result of ``check``: max relative errors per leaf for each pair of gradients.

    manual_vs_autodiff: {leaf: max r}; manual_vs_autodiff_scaled: {leaf: max |manual -
    autodiff| / max |autodiff|}; fd_vs_autodiff, fd_vs_manual: {leaf: max r over
    the checked coordinates that cross no kink}; kinks: {leaf: number of checked
    coordinates whose step crossed a kink}; checked: {leaf: coordinates checked}.
    """

    dtype: str
    h: float
    fd_floor: float
    manual_vs_autodiff: dict[str, float]
    manual_vs_autodiff_scaled: dict[str, float] = field(default_factory=dict)
    fd_vs_autodiff: dict[str, float] = field(default_factory=dict)
    fd_vs_manual: dict[str, float] = field(default_factory=dict)
    kinks: dict[str, int] = field(default_factory=dict)
    checked: dict[str, int] = field(default_factory=dict)
    loss: float = float("nan")
    matmul_precision: str = "highest"

    def max(self, pair: str = "manual_vs_autodiff") -> float:
        """Largest error over all leaves for one pair."""
        return max(getattr(self, pair).values(), default=0.0)

    def per_layer(self, pair: str = "manual_vs_autodiff") -> dict[str, float]:
        """Largest error per layer for one pair."""
        return per_layer(getattr(self, pair))

    def table(self) -> str:
        """A plain-text table, one row per leaf."""
        rows = [f"{'leaf':<18}{'manual/autodiff':>17}{'(scaled)':>10}{'fd/autodiff':>13}"
                f"{'fd/manual':>11}{'checked':>9}{'kinks':>7}"]
        for name, e in self.manual_vs_autodiff.items():
            scaled = self.manual_vs_autodiff_scaled.get(name, float("nan"))
            fa = self.fd_vs_autodiff.get(name, float("nan"))
            fm = self.fd_vs_manual.get(name, float("nan"))
            rows.append(f"{name:<18}{e:>17.2e}{scaled:>10.2e}{fa:>13.2e}{fm:>11.2e}"
                        f"{self.checked.get(name, 0):>9}{self.kinks.get(name, 0):>7}")
        return "\n".join(rows)


def check(
    model,
    params,
    X: ArrayLike,
    Y: ArrayLike,
    *,
    fd: bool = True,
    h: float | None = None,
    fd_floor: float | None = None,
    max_coords: int | None = 2000,
    key: jax.Array | None = None,
) -> Report:
    """Manual, autodiff and finite-difference gradients of ``model.loss`` at ``params``.

    The autodiff gradient is ``jax.grad(model.loss)``, the manual one
    ``model.manual_grad`` (the δ recursion), so the two are independent computations.
    Finite differences use ``finite_differences`` on ``model.loss``; with more than
    ``max_coords`` parameters a random subset drawn with ``key`` (default key 0).
    ``fd_floor`` defaults to 1e-5 in float64 and 1e-2 in float32: central differences
    carry an absolute error of about eps |L| / h + h^2 |L'| (about 1e-11 and 1e-4
    for h = 1e-5 and 1e-2), so a true gradient of exactly 0 (a dead ReLU unit) would
    otherwise show a relative error of 1 from rounding alone.

    Every gradient and difference quotient is computed with
    ``jax.default_matmul_precision("highest")``: on GPUs (TF32) and TPUs the default
    float32 matrix products round to about 1e-3, far above what is being checked.
    """
    model.check(params, X, Y)
    with jax.default_matmul_precision("highest"):
        return _check(model, params, X, Y, fd, h, fd_floor, max_coords, key)


def _check(model, params, X, Y, fd, h, fd_floor, max_coords, key) -> Report:
    dtype = jnp.result_type(jax.tree.leaves(params)[0])
    if h is None:
        h = default_step(dtype)
    if fd_floor is None:
        fd_floor = 1e-5 if dtype == jnp.float64 else 1e-2
    loss_value, manual = jax.jit(model.manual_grad)(params, X, Y)
    autodiff = jax.jit(jax.grad(model.loss))(params, X, Y)
    report = Report(str(dtype), h, fd_floor, compare_trees(manual, autodiff),
                    compare_trees_scaled(manual, autodiff), loss=float(loss_value))
    if not fd:
        return report

    pattern = getattr(model, "kink_pattern", None)
    indices, quotients, kinks = finite_differences(
        lambda p: model.loss(p, X, Y), params, h=h, max_coords=max_coords,
        key=jax.random.key(0) if key is None else key,
        pattern_fn=None if pattern is None else (lambda p: pattern(p, X)),
    )
    flat_auto = np.asarray(ravel_pytree(autodiff)[0])[indices]
    flat_manual = np.asarray(ravel_pytree(manual)[0])[indices]
    r_auto = np.asarray(relative_error(quotients, flat_auto, fd_floor))
    r_manual = np.asarray(relative_error(quotients, flat_manual, fd_floor))
    (report.checked, report.kinks, report.fd_vs_autodiff, report.fd_vs_manual) = _per_leaf(
        leaf_names(params), jax.tree.leaves(params), indices, kinks, r_auto, r_manual)
    return report


def _per_leaf(names, leaves, indices, kinks, *errors) -> tuple[dict, ...]:
    """Per leaf: coordinates checked, kinks crossed, and the max of each flat array of
    ``errors`` over the leaf's checked coordinates that cross no kink."""
    bounds = np.cumsum([0] + [leaf.size for leaf in leaves])
    checked, crossed, maxima = {}, {}, [{} for _ in errors]
    for name, lo, hi in zip(names, bounds[:-1], bounds[1:], strict=True):
        here = (indices >= lo) & (indices < hi)
        checked[name], crossed[name] = int(here.sum()), int((here & kinks).sum())
        for found, e in zip(maxima, errors, strict=True):
            found[name] = float(e[here & ~kinks].max(initial=0.0))
    return checked, crossed, *maxima


@dataclass
class LayerReport:
    """Result of ``check_layer``: the hand-written backward of one layer against
    ``jax.vjp`` of its forward and against central differences, per leaf.

    Leaves are the layer's params (``['W']``, ...) and ``a_prev`` (δ_prev = ∂L/∂a_prev).
    vjp: {leaf: max relative error of backward vs ``jax.vjp``}; fd: {leaf: max relative
    error of backward vs the difference quotients, over coordinates that cross no kink};
    kinks: coordinates whose step crossed a kink; checked: coordinates checked.
    """

    kind: str
    dtype: str
    h: float
    fd_floor: float
    vjp: dict[str, float]
    fd: dict[str, float] = field(default_factory=dict)
    kinks: dict[str, int] = field(default_factory=dict)
    checked: dict[str, int] = field(default_factory=dict)
    matmul_precision: str = "highest"

    def max(self, pair: str = "vjp") -> float:
        return max(getattr(self, pair).values(), default=0.0)

    def ok(self, vjp_tol: float | None = None, fd_tol: float | None = None) -> bool:
        """Both maxima within tolerance: default 1e-10 and 1e-6 in float64 (1e-4, 1e-1)."""
        wide = self.dtype != "float64"
        vjp_tol = (1e-4 if wide else 1e-10) if vjp_tol is None else vjp_tol
        fd_tol = (1e-1 if wide else 1e-6) if fd_tol is None else fd_tol
        return self.max("vjp") <= vjp_tol and self.max("fd") <= fd_tol

    def table(self) -> str:
        rows = [f"{self.kind}: {'leaf':<12}{'backward/vjp':>14}{'backward/fd':>13}"
                f"{'checked':>9}{'kinks':>7}"]
        for name, e in self.vjp.items():
            rows.append(f"{'':<{len(self.kind) + 2}}{name:<12}{e:>14.2e}"
                        f"{self.fd.get(name, float('nan')):>13.2e}"
                        f"{self.checked.get(name, 0):>9}{self.kinks.get(name, 0):>7}")
        return "\n".join(rows)


def check_layer(layer, params, a_prev: ArrayLike, *, delta: ArrayLike | None = None,
                key: jax.Array | None = None, h: float | None = None,
                fd_floor: float | None = None, max_coords: int | None = 2000) -> LayerReport:
    """A layer's hand-written ``backward`` against ``jax.vjp`` and finite differences.

    For one example ``a_prev`` (the layer's input) and a cotangent δ (``delta``, default
    standard normal drawn with ``key``), the backward's (∂L/∂params, δ_prev) for
    L = Σ δ ∘ forward(params, a_prev) are compared with ``jax.vjp`` of the forward
    (analytic vs analytic: about 1e-15 in float64) and with central differences of L in
    every coordinate of params and a_prev (a seeded subset beyond ``max_coords``).
    Coordinates whose step changes the layer's ``kinks`` pattern are reported apart.
    Any object with the layer protocol's forward and backward can be checked, so a new
    layer kind is checked by one call; the tests run it for every registered kind.
    """
    a_prev = jnp.asarray(a_prev)
    key = jax.random.key(0) if key is None else key
    with jax.default_matmul_precision("highest"):
        a, cache = layer.forward(params, a_prev)
        if delta is None:
            delta = jax.random.normal(key, a.shape, a.dtype)
        delta = jnp.asarray(delta)
        if delta.shape != a.shape:
            raise ValueError(f"delta must have the layer's output shape {a.shape}, "
                             f"got {delta.shape}")
        grads, delta_prev = layer.backward(params, cache, delta)
        _, vjp = jax.vjp(lambda p, x: layer.forward(p, x)[0], params, a_prev)
        manual = {"params": grads, "a_prev": delta_prev}
        reference = dict(zip(("params", "a_prev"), vjp(delta), strict=True))
        names = [n.replace("['params']", "").replace("['a_prev']", "a_prev")
                 for n in leaf_names(manual)]
        vjp_errors = dict(zip(names, compare_trees(manual, reference).values(), strict=True))
        report = LayerReport(getattr(layer, "kind", type(layer).__name__), str(a.dtype),
                             default_step(a.dtype) if h is None else h,
                             (1e-5 if a.dtype == jnp.float64 else 1e-2)
                             if fd_floor is None else fd_floor, vjp_errors)
        point = {"params": params, "a_prev": a_prev}
        kinks_of = getattr(layer, "kinks", None)
        pattern = None if kinks_of is None else (
            lambda t: kinks_of(t["params"], layer.forward(t["params"], t["a_prev"])[1]))
        indices, quotients, kinks = finite_differences(
            lambda t: jnp.sum(delta * layer.forward(t["params"], t["a_prev"])[0]), point,
            h=report.h, max_coords=max_coords, key=key, pattern_fn=pattern)
        flat = np.asarray(ravel_pytree(manual)[0])[indices]
        errors = np.asarray(relative_error(quotients, flat, report.fd_floor))
    report.checked, report.kinks, report.fd = _per_leaf(
        names, jax.tree.leaves(manual), indices, kinks, errors)
    return report
