"""Tests of jaxnn.conv against independent computations.

The three forward forms are compared with each other and with plain numpy loops; every
hand-written backward pass is compared with `jax.grad` of the forward pass (analytic vs
analytic, float64 to 1e-10) and, on tiny cases, with central finite differences.
"""

import itertools
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from jax import lax

from jaxnn import conv

# float32 tolerance for hand-written vs autodiff gradients. Both sides are exact in real
# arithmetic; they differ only in the order of float32 roundings. The largest reduction in
# these tests sums n ≈ 150 products (dW over m·H_out·W_out positions); the worst-case
# bound for such a sum is about n·u ≈ 150 · 6e-8 ≈ 1e-5 of the sum of |terms|, and errors
# measured relative to the largest gradient entry stay below it (observed ≤ 6e-7).
F32_TOL = 1e-5
F64_TOL = 1e-10

STRIDES = [1, 2, (2, 3)]
PADDINGS = ["VALID", "SAME", 1, ((2, 0), (1, 3))]


def rel_err(a, b) -> float:
    """max |a − b| relative to the larger of max |a|, max |b| (0 when both are zero)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    scale = max(np.abs(a).max(initial=0.0), np.abs(b).max(initial=0.0))
    return 0.0 if scale == 0.0 else float(np.abs(a - b).max() / scale)


def normal(seed, *shape, dtype=np.float64):
    return np.random.default_rng(seed).normal(size=shape).astype(dtype)


def conv_numpy(x, W, b, stride, pads):
    """Independent reference: numpy loops over examples, positions and filters."""
    (sh, sw), ((top, bottom), (left, right)) = stride, pads
    x = np.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0)))
    m, Hp, Wp, _ = x.shape
    kh, kw, _, C_out = W.shape
    H_out, W_out = (Hp - kh) // sh + 1, (Wp - kw) // sw + 1
    z = np.empty((m, H_out, W_out, C_out))
    for n, i, j, o in itertools.product(range(m), range(H_out), range(W_out), range(C_out)):
        window = x[n, i * sh : i * sh + kh, j * sw : j * sw + kw, :]
        z[n, i, j, o] = np.sum(W[:, :, :, o] * window) + b[o]
    return z


def pool_numpy(x, window, stride, reduce):
    (wh, ww), (sh, sw) = window, stride
    m, H, W, C = x.shape
    H_out, W_out = (H - wh) // sh + 1, (W - ww) // sw + 1
    out = np.empty((m, H_out, W_out, C))
    for i, j in itertools.product(range(H_out), range(W_out)):
        out[:, i, j, :] = reduce(x[:, i * sh : i * sh + wh, j * sw : j * sw + ww, :], axis=(1, 2))
    return out


# --------------------------------------------------------------------------- padding, shapes


@pytest.mark.parametrize(
    ("padding", "H", "W", "kh", "kw", "stride", "expected"),
    [
        ("VALID", 7, 9, 3, 3, 2, ((0, 0), (0, 0))),
        ("SAME", 7, 9, 3, 3, 1, ((1, 1), (1, 1))),
        ("SAME", 7, 9, 4, 4, 1, ((1, 2), (1, 2))),  # even kernel: extra zero bottom/right
        ("SAME", 7, 9, 4, 3, 2, ((1, 2), (1, 1))),  # ceil(7/2)=4: (4−1)·2+4−7 = 3
        ("SAME", 8, 8, 1, 1, 2, ((0, 0), (0, 0))),  # never negative
        ("same", 5, 5, 3, 3, 1, ((1, 1), (1, 1))),
        (2, 7, 9, 3, 3, 1, ((2, 2), (2, 2))),
        (((1, 0), (2, 3)), 7, 9, 3, 3, 1, ((1, 0), (2, 3))),
    ],
)
def test_resolve_padding(padding, H, W, kh, kw, stride, expected):
    assert conv.resolve_padding(padding, H, W, kh, kw, stride) == expected


@pytest.mark.parametrize("mode", ["SAME", "VALID"])
@pytest.mark.parametrize("stride", [1, 2, 3, (2, 3)])
@pytest.mark.parametrize("size", [(7, 9), (8, 8), (5, 12)])
@pytest.mark.parametrize("kernel", [(1, 1), (2, 2), (3, 4), (5, 5)])
def test_resolve_padding_matches_lax(mode, stride, size, kernel):
    strides = (stride, stride) if isinstance(stride, int) else stride
    expected = lax.padtype_to_pads(size, kernel, strides, mode)
    got = conv.resolve_padding(mode, *size, *kernel, stride)
    assert [tuple(p) for p in expected] == list(got)
    if mode == "SAME":
        out = conv.conv2d_output_shape((1, *size, 1), (*kernel, 1, 1), stride, mode)
        assert out[1:3] == tuple(-(-n // s) for n, s in zip(size, strides, strict=True))


def test_output_shape_matches_forward():
    x, W, b = normal(0, 2, 7, 9, 3), normal(1, 3, 2, 3, 5), normal(2, 5)
    for stride, padding, method in itertools.product(STRIDES, PADDINGS, ["lax", "im2col"]):
        forward = partial(conv.conv2d, stride=stride, padding=padding, method=method)
        z = jax.eval_shape(forward, x, W, b)
        assert z.shape == conv.conv2d_output_shape(x.shape, W.shape, stride, padding)


# --------------------------------------------------------------------------- forward forms


def test_worked_example_by_hand():
    """The notes' 4×4 filter θ on a 6×6 image: a = Σ θ_ij x_ij over each 4×4 window.

    With x[r, s] = 6r + s and θ = 1, the top-left window sums to
    Σ_{r,s<4} (6r + s) = 6·4·6 + 4·6 = 168, and moving the window by one column adds
    16 (each of 16 entries grows by 1), by one row adds 96.
    """
    x = np.arange(36.0).reshape(1, 6, 6, 1)
    theta = np.ones((4, 4, 1, 1))
    expected = np.array([[168.0, 184.0, 200.0], [264.0, 280.0, 296.0], [360.0, 376.0, 392.0]])
    for method, forward in conv.CONV2D_METHODS.items():
        z = conv.conv2d(x, theta, np.zeros(1), method=method)
        np.testing.assert_array_equal(np.asarray(z)[0, :, :, 0], expected)
        np.testing.assert_array_equal(forward(x, theta, np.zeros(1)), z)


@pytest.mark.parametrize("method", sorted(conv.CONV2D_METHODS))
def test_forward_matches_numpy_loops(method):
    x, W, b = normal(3, 2, 7, 9, 3), normal(4, 4, 4, 3, 4), normal(5, 4)
    for stride, padding in [(1, "VALID"), (2, 1), (1, "SAME")]:
        pads = conv.resolve_padding(padding, 7, 9, 4, 4, stride)
        s = (stride, stride)
        expected = conv_numpy(x, W, b, s, pads)
        z = conv.conv2d(x, W, b, stride, padding, method=method)
        assert rel_err(z, expected) < 1e-13


# Every kernel with every stride and padding; the channel counts (C_in, C_out) go with the
# kernel, so that each channel pair also meets every stride and padding (a pairwise cover of
# the full product, which would cost four times the compilations for no new code path).
KERNEL_CHANNELS = [((1, 1), 1, 1), ((2, 2), 1, 4), ((3, 3), 3, 1), ((4, 4), 3, 4), ((2, 3), 3, 4)]


@pytest.mark.parametrize(("kernel", "C_in", "C_out"), KERNEL_CHANNELS)
@pytest.mark.parametrize("padding", ["VALID", "SAME", 1])
@pytest.mark.parametrize("stride", [1, 2])
def test_im2col_matches_lax(stride, padding, kernel, C_in, C_out):
    x = normal(6, 2, 7, 9, C_in)
    W = normal(7, *kernel, C_in, C_out)
    b = normal(8, C_out)
    z_lax = conv.conv2d_lax(x, W, b, stride, padding)
    z_im2col = conv.conv2d_im2col(x, W, b, stride, padding)
    assert z_lax.shape == z_im2col.shape
    assert z_lax.dtype == z_im2col.dtype == np.float64
    assert rel_err(z_im2col, z_lax) < 1e-12


# The sliding form runs Python loops, so it is checked on a representative subset: every
# stride with every padding, the kernel sizes 1×1 … 4×4 (with their channel pairs) taking
# turns in a Latin square, so that each kernel meets each stride and most paddings.
SLIDING_CASES = [
    (stride, padding, *KERNEL_CHANNELS[(i + j) % 4])
    for i, stride in enumerate([1, 2, (2, 1)])
    for j, padding in enumerate(PADDINGS)
]


@pytest.mark.parametrize(("stride", "padding", "kernel", "C_in", "C_out"), SLIDING_CASES)
def test_sliding_matches_lax(stride, padding, kernel, C_in, C_out):
    x, W, b = normal(9, 2, 7, 9, C_in), normal(10, *kernel, C_in, C_out), normal(11, C_out)
    z_lax = conv.conv2d_lax(x, W, b, stride, padding)
    z_sliding = conv.conv2d_sliding(x, W, b, stride, padding)
    assert rel_err(z_sliding, z_lax) < 1e-12


@settings(max_examples=5, deadline=None)
@given(
    H=st.integers(1, 9),
    W=st.integers(1, 9),
    kh=st.integers(1, 4),
    kw=st.integers(1, 4),
    sh=st.integers(1, 3),
    sw=st.integers(1, 3),
    pads=st.tuples(*[st.integers(0, 3)] * 4),
)
def test_random_geometry_forward_and_backward(H, W, kh, kw, sh, sw, pads):
    """Any geometry whose kernel fits the padded image: im2col = lax; backward = jax.grad.

    The reference here is jax.grad of the im2col form: jax.grad of the lax form can abort
    the process inside XLA for some geometries (see
    `test_conv_backward_where_autodiff_of_lax_conv_aborts`).
    """
    padding = ((pads[0], pads[1]), (pads[2], pads[3]))
    assume(kh <= H + pads[0] + pads[1] and kw <= W + pads[2] + pads[3])
    x, Wk, b = normal(H, 1, H, W, 2), normal(kw, kh, kw, 2, 3), normal(0, 3)
    z = conv.conv2d_lax(x, Wk, b, (sh, sw), padding)
    assert rel_err(conv.conv2d_im2col(x, Wk, b, (sh, sw), padding), z) < 1e-12
    delta = normal(sh, *z.shape)
    expected = _conv_grads(x, Wk, b, delta, (sh, sw), padding, forward=conv.conv2d_im2col)
    for method in conv.CONV2D_BACKWARD_METHODS:
        got = conv.conv2d_backward(x, Wk, delta, (sh, sw), padding, method=method)
        for g, e in zip(got, expected, strict=True):
            assert rel_err(g, e) < F64_TOL


def test_unknown_method():
    x, W, b = normal(15, 1, 5, 5, 2), normal(16, 3, 3, 2, 2), normal(17, 2)
    with pytest.raises(ValueError, match=r"unknown conv2d method 'fft'.*'im2col'.*'lax'"):
        conv.conv2d(x, W, b, method="fft")
    delta = np.ones((1, 3, 3, 2))
    with pytest.raises(ValueError, match=r"unknown conv2d_backward method 'sliding'"):
        conv.conv2d_backward(x, W, delta, method="sliding")


def test_float32_stays_float32():
    """float64 results are checked as float64 by the tests above; here float32 in, out."""
    dtype = np.float32
    x, W = normal(18, 1, 6, 6, 2, dtype=dtype), normal(19, 3, 3, 2, 2, dtype=dtype)
    b = normal(20, 2, dtype=dtype)
    for method in conv.CONV2D_METHODS:
        assert conv.conv2d(x, W, b, 2, "SAME", method=method).dtype == dtype
    delta = normal(21, 1, 3, 3, 2, dtype=dtype)
    for method in conv.CONV2D_BACKWARD_METHODS:
        for g in conv.conv2d_backward(x, W, delta, 2, "SAME", method=method):
            assert g.dtype == dtype
    assert conv.max_pool(x, 2).dtype == dtype
    assert conv.avg_pool(x, 2).dtype == dtype
    assert conv.max_pool_backward(x, normal(22, 1, 3, 3, 2, dtype=dtype), 2).dtype == dtype
    assert conv.avg_pool_backward(x.shape, normal(22, 1, 3, 3, 2, dtype=dtype), 2).dtype == dtype
    assert conv.flatten(x).dtype == dtype


def test_jit_with_static_configuration_compiles_once():
    traces = []

    def step(x, W, b, stride, padding):
        traces.append(1)
        z = conv.conv2d(x, W, b, stride, padding)
        return z, conv.conv2d_backward(x, W, z, stride, padding)

    step = jax.jit(step, static_argnames=("stride", "padding"))
    x, W, b = normal(23, 2, 7, 9, 3), normal(24, 3, 3, 3, 4), normal(25, 4)
    z, grads = step(x, W, b, 2, ((1, 0), (0, 1)))
    step(x + 1.0, W, b, 2, ((1, 0), (0, 1)))
    assert len(traces) == 1
    assert rel_err(z, conv.conv2d_sliding(x, W, b, 2, ((1, 0), (0, 1)))) < 1e-12
    eager = conv.conv2d_backward(x, W, z, 2, ((1, 0), (0, 1)))
    for g, e in zip(grads, eager, strict=True):
        assert rel_err(g, e) < 1e-12


def test_im2col_order_and_col2im_is_its_adjoint():
    x = normal(26, 2, 5, 6, 3)
    cols = conv.im2col(x, 2, 3, stride=(1, 2), padding=1)
    assert cols.shape == (2, 6, 3, 2 * 3 * 3)
    x_pad = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    np.testing.assert_array_equal(cols[1, 4, 2], x_pad[1, 4:6, 4:7, :].reshape(-1))
    # <im2col(x), c> = <x, col2im(c)> for all x, c: col2im is the transpose.
    c = normal(27, *cols.shape)
    lhs = np.sum(np.asarray(cols) * c)
    rhs = np.sum(x * np.asarray(conv.col2im(c, x.shape, 2, 3, (1, 2), 1)))
    assert abs(lhs - rhs) < 1e-12 * abs(lhs)


# --------------------------------------------------------------------------- conv backward


def _conv_grads(x, W, b, delta, stride, padding, forward=conv.conv2d_lax):
    """jax.grad of L = Σ z ∘ delta with z = forward(x, W, b), so that ∂L/∂z = delta."""

    def loss(W, b, x, delta):
        return jnp.sum(forward(x, W, b, stride, padding) * delta)

    return jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(W, b, x, delta)


# A 2×4 kernel on a 7×9 image: with stride 2 or 3 the windows stop short of the last
# row/column for some paddings, which then must get zero gradient.
@pytest.mark.parametrize("padding", PADDINGS)
@pytest.mark.parametrize("stride", STRIDES)
def test_conv_backward_matches_autodiff_float64(stride, padding):
    x, W, b = normal(28, 2, 7, 9, 2), normal(29, 2, 4, 2, 3), normal(30, 3)
    delta = normal(31, *conv.conv2d_output_shape(x.shape, W.shape, stride, padding))
    expected = _conv_grads(x, W, b, delta, stride, padding)
    for method in conv.CONV2D_BACKWARD_METHODS:
        got = conv.conv2d_backward(x, W, delta, stride, padding, method=method)
        for name, g, e in zip(("dW", "db", "dx"), got, expected, strict=True):
            assert g.shape == e.shape
            assert g.dtype == np.float64
            assert rel_err(g, e) < F64_TOL, (method, name, rel_err(g, e))


@pytest.mark.parametrize(
    ("stride", "padding"), [(1, "SAME"), (2, "VALID"), (3, 1), ((2, 1), ((2, 0), (1, 3)))]
)
def test_conv_backward_matches_autodiff_float32(stride, padding):
    f32 = np.float32
    x, W = normal(32, 2, 7, 9, 3, dtype=f32), normal(33, 3, 3, 3, 4, dtype=f32)
    b = normal(34, 4, dtype=f32)
    delta = normal(35, *conv.conv2d_output_shape(x.shape, W.shape, stride, padding), dtype=f32)
    with jax.default_matmul_precision("highest"):
        expected = _conv_grads(x, W, b, delta, stride, padding)
        for method in conv.CONV2D_BACKWARD_METHODS:
            got = conv.conv2d_backward(x, W, delta, stride, padding, method=method)
            for name, g, e in zip(("dW", "db", "dx"), got, expected, strict=True):
                assert g.dtype == np.float32
                assert rel_err(g, e) < F32_TOL, (method, name, rel_err(g, e))


def test_conv_backward_where_autodiff_of_lax_conv_aborts():
    """x (1, 4, 3, 1), kernel 2×4, stride (2, 1), padding 1.

    With jax 0.10.2 on CPU, jax.grad of `lax.conv_general_dilated` at this geometry makes
    XLA's algebraic simplifier fail a CHECK and abort the process ("Window dimensions do not
    match RHS shape"). The hand-written backward pads and crops explicitly, never passing a
    negative padding to XLA, and is checked here against jax.grad of the im2col form.
    """
    x, W, b = normal(54, 1, 4, 3, 1), normal(55, 2, 4, 1, 1), normal(56, 1)
    stride, padding = (2, 1), 1
    delta = normal(57, *conv.conv2d_output_shape(x.shape, W.shape, stride, padding))
    expected = _conv_grads(x, W, b, delta, stride, padding, forward=conv.conv2d_im2col)
    for method in conv.CONV2D_BACKWARD_METHODS:
        got = conv.conv2d_backward(x, W, delta, stride, padding, method=method)
        for g, e in zip(got, expected, strict=True):
            assert rel_err(g, e) < F64_TOL


def test_conv_backward_untouched_rows_get_zero():
    """7×9 input, 2×2 kernel, stride 2, VALID: row 6 and column 8 lie under no window."""
    x, W = normal(36, 1, 7, 9, 2), normal(37, 2, 2, 2, 3)
    delta = normal(38, 1, 3, 4, 3)
    for method in conv.CONV2D_BACKWARD_METHODS:
        _, _, dx = conv.conv2d_backward(x, W, delta, 2, "VALID", method=method)
        assert np.all(np.asarray(dx)[:, 6, :, :] == 0.0)
        assert np.all(np.asarray(dx)[:, :, 8, :] == 0.0)
        assert np.all(np.asarray(dx)[:, :6, :8, :] != 0.0)


def test_conv_backward_sums_over_batch():
    x, W = normal(39, 3, 5, 5, 2), normal(40, 3, 3, 2, 2)
    delta = normal(41, 3, 3, 3, 2)
    dW, db, _ = conv.conv2d_backward(x, W, delta)
    per_example = [conv.conv2d_backward(x[n : n + 1], W, delta[n : n + 1]) for n in range(3)]
    assert rel_err(dW, sum(g[0] for g in per_example)) < 1e-14
    assert rel_err(db, sum(g[1] for g in per_example)) < 1e-14


def _central_differences(f, x, h=1e-5):
    x = np.array(x, dtype=np.float64)
    grad = np.zeros_like(x)
    for idx in np.ndindex(x.shape):
        e = np.zeros_like(x)
        e[idx] = h
        grad[idx] = (f(x + e) - f(x - e)) / (2 * h)
    return grad


@pytest.mark.parametrize("method", sorted(conv.CONV2D_BACKWARD_METHODS))
def test_conv_backward_matches_finite_differences(method):
    x, W, b = normal(42, 1, 4, 5, 2), normal(43, 2, 3, 2, 2), normal(44, 2)
    stride, padding = (2, 1), ((1, 0), (0, 2))
    delta = normal(45, *conv.conv2d_output_shape(x.shape, W.shape, stride, padding))

    def loss(x, W, b):
        return float(np.sum(conv_numpy(x, W, b, (2, 1), padding) * delta))

    dW, db, dx = conv.conv2d_backward(x, W, delta, stride, padding, method=method)
    # The loss is linear in each argument, so central differences are exact up to rounding
    # (≈ eps·|L|/h ≈ 1e-10 relative).
    assert rel_err(dW, _central_differences(lambda W: loss(x, W, b), W)) < 1e-8
    assert rel_err(db, _central_differences(lambda b: loss(x, W, b), b)) < 1e-8
    assert rel_err(dx, _central_differences(lambda x: loss(x, W, b), x)) < 1e-8


# --------------------------------------------------------------------------- pooling

POOLS = [
    ((8, 6), 2, None),  # windows tile the image: the reshape path
    ((7, 9), 2, None),  # last row/column under no window
    ((7, 9), 3, 2),  # overlapping windows
    ((7, 9), (2, 3), (1, 2)),
    ((6, 6), (3, 2), None),
]


def _pair(v, default):
    v = default if v is None else v
    return (v, v) if isinstance(v, int) else v


@pytest.mark.parametrize(("size", "window", "stride"), POOLS)
def test_pool_forward_matches_numpy(size, window, stride):
    x = normal(46, 2, *size, 3)
    w, s = _pair(window, None), _pair(stride, window)
    assert rel_err(conv.max_pool(x, window, stride), pool_numpy(x, w, s, np.max)) == 0.0
    assert rel_err(conv.avg_pool(x, window, stride), pool_numpy(x, w, s, np.mean)) < 1e-15
    assert conv.max_pool(x, window, stride).shape == conv.pool_output_shape(x.shape, window, stride)


def _pool_grad(pool, x, delta, window, stride):
    """jax.grad of L = Σ pool(x) ∘ delta."""

    def loss(x, delta):
        return jnp.sum(pool(x, window, stride) * delta)

    return jax.jit(jax.grad(loss))(x, delta)


@pytest.mark.parametrize(
    ("size", "window", "stride", "dtype"),
    [(*pool, np.float64) for pool in POOLS] + [(*pool, np.float32) for pool in POOLS[1:3]],
)
def test_pool_backward_matches_autodiff(size, window, stride, dtype):
    # Continuous random inputs: ties have probability zero, so the tie rules do not matter.
    x = normal(47, 2, *size, 3, dtype=dtype)
    shape = conv.pool_output_shape(x.shape, window, stride)
    delta = normal(48, *shape, dtype=dtype)
    tol = F64_TOL if dtype == np.float64 else F32_TOL

    expected = _pool_grad(conv.max_pool, x, delta, window, stride)
    got = conv.max_pool_backward(x, delta, window, stride)
    assert got.dtype == dtype
    assert rel_err(got, expected) < tol
    # A non-overlapping pool passes each δ to exactly one input, unchanged.
    if stride is None:
        assert rel_err(got, expected) == 0.0

    expected = _pool_grad(conv.avg_pool, x, delta, window, stride)
    got = conv.avg_pool_backward(x.shape, delta, window, stride)
    assert got.dtype == dtype
    assert rel_err(got, expected) < tol


def test_max_pool_backward_matches_finite_differences():
    x = normal(49, 1, 5, 5, 2)
    delta = normal(50, 1, 2, 2, 2)
    got = conv.max_pool_backward(x, delta, 3, 2)

    def loss(x):
        return float(np.sum(pool_numpy(x, (3, 3), (2, 2), np.max) * delta))

    # Random entries are ≥ 1e-5 apart, so no step crosses a kink (a change of argmax).
    assert rel_err(got, _central_differences(loss, x, h=1e-7)) < 1e-8


def test_max_pool_backward_tie_rule_first_maximum_wins():
    """Ties go to the first maximum in row-major window order (worked by hand).

    x (one channel)        2×2 windows, stride 2
        1 1 | 0 5          top-left: all four tie at 1  -> (0, 0) gets δ = 10
        1 1 | 5 5          top-right: three 5s tie      -> (0, 3) gets δ = 20
        ----+----
        2 3 | 4 4          bottom-left: single max 3     -> (2, 1) gets δ = 30
        3 0 | 4 4          bottom-right: all tie at 4   -> (2, 2) gets δ = 40
    """
    x = np.array([[1, 1, 0, 5], [1, 1, 5, 5], [2, 3, 4, 4], [3, 0, 4, 4]], float)
    delta = np.array([[10.0, 20.0], [30.0, 40.0]])
    dx = conv.max_pool_backward(x[None, :, :, None], delta[None, :, :, None], 2)
    expected = np.array([[10, 0, 0, 20], [0, 0, 0, 0], [0, 30, 40, 0], [0, 0, 0, 0]], float)
    np.testing.assert_array_equal(np.asarray(dx)[0, :, :, 0], expected)


def test_max_pool_autodiff_splits_ties_by_halves():
    """jax.grad of the tiled max pool (a pairwise tree of maxima, cells in row-major order)
    halves δ at each tie of the tree; each window still passes its δ on in full.

    Same x as above: top-left 4-way tie -> 10/4 each; top-right max(0,5) = 5 takes the
    first pair's half (10), the tie 5,5 of the second pair splits the other half (5, 5);
    bottom-left: the two 3s are the maxima of the two pairs -> 15 each; bottom-right
    4-way tie -> 40/4 each.
    """
    x = np.array([[1, 1, 0, 5], [1, 1, 5, 5], [2, 3, 4, 4], [3, 0, 4, 4]], float)
    delta = np.array([[10.0, 20.0], [30.0, 40.0]])
    dx = _pool_grad(conv.max_pool, x[None, :, :, None], delta[None, :, :, None], 2, None)
    expected = np.array([[2.5, 2.5, 0, 10], [2.5, 2.5, 5, 5], [0, 15, 10, 10], [15, 0, 10, 10]])
    np.testing.assert_array_equal(np.asarray(dx)[0, :, :, 0], expected)


def test_max_pool_backward_tie_rule_overlapping_windows():
    """3×3 of equal values, 2×2 windows, stride 1: each window's first entry wins.

    Windows start at (0,0), (0,1), (1,0), (1,1), each winning its top-left entry, so those
    four entries receive δ = 1, 2, 3, 4 of their own window.
    """
    x = np.full((1, 3, 3, 1), 7.0)
    delta = np.array([[1.0, 2.0], [3.0, 4.0]])[None, :, :, None]
    dx = conv.max_pool_backward(x, delta, 2, 1)
    expected = np.array([[1, 2, 0], [3, 4, 0], [0, 0, 0]], float)
    np.testing.assert_array_equal(np.asarray(dx)[0, :, :, 0], expected)


def test_avg_pool_backward_spreads_evenly():
    delta = np.array([[4.0, 8.0]])[None, :, :, None]  # (1, 1, 2, 1)
    dx = conv.avg_pool_backward((1, 2, 5, 1), delta, 2)
    expected = np.array([[1, 1, 2, 2, 0], [1, 1, 2, 2, 0]], float)
    np.testing.assert_array_equal(np.asarray(dx)[0, :, :, 0], expected)


# --------------------------------------------------------------------------- flatten


def test_flatten_notes_example():
    """A 64 × 64 × 3 image flattens to 12,288 numbers, row-major in (H, W, C)."""
    x = normal(51, 1, 64, 64, 3)
    a = conv.flatten(x)
    assert a.shape == (1, 12288)
    np.testing.assert_array_equal(a, x.reshape(1, -1))
    r, s, c = 17, 40, 2
    assert a[0, (r * 64 + s) * 3 + c] == x[0, r, s, c]
    np.testing.assert_array_equal(conv.unflatten(a, (64, 64, 3)), x)


def test_flatten_backward_matches_autodiff():
    x = normal(52, 2, 3, 4, 5)
    delta = normal(53, 2, 60)
    expected = jax.grad(lambda x: jnp.sum(conv.flatten(x) * delta))(x)
    got = conv.flatten_backward(x.shape, delta)
    assert got.shape == x.shape
    np.testing.assert_array_equal(got, expected)


# --------------------------------------------------------------------------- bad input

X = np.zeros((2, 6, 6, 3))
K = np.zeros((3, 3, 3, 4))
B = np.zeros(4)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: conv.conv2d(X, np.zeros((3, 3, 2, 4)), B), r"C_in = 2 .* x has 3 "),
        (lambda: conv.conv2d(X, np.zeros((7, 3, 3, 4)), B), r"kernel of size 7x3 is larger"),
        (lambda: conv.conv2d(X, np.zeros((9, 9, 3, 4)), B, padding=1), r"padded image .* 8x8"),
        (lambda: conv.conv2d(X, K, B, stride=0), r"stride must be positive, got 0"),
        (lambda: conv.conv2d(X, K, B, stride=(1, -2)), r"stride must be positive"),
        (lambda: conv.conv2d(X, K, B, stride=1.5), r"stride must be a positive int.*1\.5"),
        (lambda: conv.conv2d(X, K, B, stride=True), r"stride must be a positive int"),
        (lambda: conv.conv2d(X, K, B, stride=(1, 2, 3)), r"stride must be"),
        (lambda: conv.conv2d(X[0], K, B), r"3-D array of shape \(6, 6, 3\); add a batch axis"),
        (lambda: conv.conv2d(X[0, 0], K, B), r"batch of shape \(m, H, W, C\), got a 2-D"),
        (lambda: conv.conv2d(X, K[0], B), r"W must have shape \(kh, kw, C_in, C_out\)"),
        (lambda: conv.conv2d(X, K, B, padding="FULL"), r"unknown string 'FULL'"),
        (lambda: conv.conv2d(X, K, B, padding=-1), r"padding must be >= 0, got -1"),
        (lambda: conv.conv2d(X, K, B, padding=((1, 1),)), r"padding must be .*\(\(1, 1\),\)"),
        (lambda: conv.conv2d(X, K, B, padding=((1, -1), (0, 0))), r"padding must be"),
        (lambda: conv.conv2d(X, K, np.zeros(3)), r"b must have shape \(C_out,\) = \(4,\)"),
        (lambda: conv.conv2d(X, K, np.zeros((4, 1))), r"got shape \(4, 1\)"),
        (lambda: conv.conv2d_backward(X, K, np.zeros((2, 4, 4, 3))), r"delta .* \(2, 4, 4, 4\)"),
        (lambda: conv.max_pool(X, 0), r"window must be positive, got 0"),
        (lambda: conv.max_pool(X, 7), r"window 7x7 is larger than the input of size 6x6"),
        (lambda: conv.avg_pool(X, (2, 7)), r"window 2x7 is larger"),
        (lambda: conv.avg_pool(X, 2, stride=0), r"stride must be positive"),
        (lambda: conv.max_pool(X[0], 2), r"3-D array .* add a batch axis"),
        (lambda: conv.max_pool_backward(X, np.zeros((2, 2, 2, 3)), 2), r"delta .*\(2, 3, 3, 3\)"),
        (lambda: conv.avg_pool_backward((6, 6, 3), np.zeros((3, 3, 3)), 2), r"3-D array"),
        (lambda: conv.flatten(X[0]), r"add a batch axis"),
        (lambda: conv.unflatten(np.zeros((2, 10)), (2, 2, 3)), r"a must have shape \(m, H·W·C\)"),
        (lambda: conv.flatten_backward(X.shape, np.zeros((2, 100))), r"got a of shape \(2, 100\)"),
    ],
)
def test_bad_input_raises(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_integer_image_raises_type_error():
    with pytest.raises(TypeError, match=r"x must be a floating-point array, got dtype int"):
        conv.conv2d(X.astype(int), K, B)
