"""Convolutional layers of the notes: conv2d, pooling and flatten, each with its backward pass.

Convolution is cross-correlation, as in the notes: an activation is the sum of the
element-wise product of the filter θ with the window of the image under it,

    a = Σ_i Σ_j θ_ij x_ij                                   (notes, CNN: θ ∈ R^{4×4})

moved across the image with a stride, over several input channels and for several
filters (output channels). With a padded input x̃ and stride (s_h, s_w) this reads

    z[n, i, j, o] = Σ_{p, q, c} W[p, q, c, o] x̃[n, i·s_h + p, j·s_w + q, c] + b[o].

Shapes: one image is HWC (H, W, C); a batch is NHWC (m, H, W, C); a kernel is HWIO
(kh, kw, C_in, C_out); a bias is (C_out,). Public functions take batches; for one
image add a batch axis (`x[None]`) or `jax.vmap` a function over examples. Every
function keeps the dtype of its inputs.

The forward pass comes in three forms that give the same numbers: `conv2d_sliding`
(the notes' sliding window, Python loops, for reading and small images),
`conv2d_im2col` (patches and one matrix product) and `conv2d_lax`
(`jax.lax.conv_general_dilated`). Each layer's hand-written backward pass sits
beside its forward pass and uses no autodiff. Backward functions return gradients
*summed* over the batch for the parameters (dW, db); a caller that wants the mean
loss divides by m.

Stride, padding, window and method are static configuration: plain Python values,
checked together with the (static) shapes before anything is computed. The public
functions validate their arguments and then call a jit-compiled core (the sliding form
excepted, which runs op by op), so an eager call compiles once per shape and
configuration; under an outer `jax.jit` (with the configuration marked static) the core
is inlined.
"""

from collections.abc import Callable
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.typing import ArrayLike

from jaxnn.layers import Conv, MaxPool
from jaxnn.layers.conv import resolve_padding

__all__ = [
    "resolve_padding",
    "conv2d_output_shape",
    "pool_output_shape",
    "im2col",
    "col2im",
    "conv2d_sliding",
    "conv2d_im2col",
    "conv2d_lax",
    "conv2d",
    "CONV2D_METHODS",
    "conv2d_backward",
    "conv2d_backward_lax",
    "conv2d_backward_im2col",
    "CONV2D_BACKWARD_METHODS",
    "max_pool",
    "max_pool_backward",
    "avg_pool",
    "avg_pool_backward",
    "flatten",
    "unflatten",
    "flatten_backward",
]

Pads = tuple[tuple[int, int], tuple[int, int]]
Padding = str | int | Pads
Pair = int | tuple[int, int]

_DIMENSION_NUMBERS = ("NHWC", "HWIO", "NHWC")


# --------------------------------------------------------------------------- validation


def _batch_shape(shape, name: str = "x") -> tuple[int, ...]:
    """``shape`` if it is an NHWC batch's; a 3-D one gets an error that says what to do."""
    shape = tuple(shape)
    if len(shape) != 4:
        hint = f"; add a batch axis ({name}[None]) or jax.vmap a function over examples" \
            if len(shape) == 3 else ""
        raise ValueError(f"{name} must be a batch of shape (m, H, W, C), got a "
                         f"{len(shape)}-D array of shape {shape}{hint}")
    return shape


def _batch(x: ArrayLike, name: str = "x") -> jax.Array:
    """x as a floating NHWC batch."""
    x = jnp.asarray(x)
    _batch_shape(x.shape, name)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(f"{name} must be a floating-point array, got dtype {x.dtype}")
    return x


def _one_dtype(**arrays) -> None:
    """Raise TypeError unless every array has one dtype (no silent promotion)."""
    dtypes = {name: jnp.result_type(a) for name, a in arrays.items()}
    if len(set(dtypes.values())) > 1:
        given = ", ".join(f"{name} {dtype}" for name, dtype in dtypes.items())
        raise TypeError(f"mixed dtypes ({given}); cast them to one (no silent promotion)")


def _check_delta(delta: ArrayLike, expected: tuple[int, ...]) -> jax.Array:
    """δ as an array of the layer's output shape ``expected``, else ValueError."""
    delta = jnp.asarray(delta)
    if delta.shape != tuple(expected):
        raise ValueError(f"delta must have the layer's output shape {tuple(expected)}, "
                         f"got {delta.shape}")
    return delta


def _conv_geometry(x_shape, W_shape, stride, padding):
    """(stride pair, pads, output shape) of a convolution, by the layer's shape inference."""
    if len(W_shape) != 4:
        raise ValueError(f"W must have shape (kh, kw, C_in, C_out) (HWIO), got {tuple(W_shape)}")
    if W_shape[2] != x_shape[3]:
        raise ValueError(f"W has C_in = {W_shape[2]} input channels (shape {tuple(W_shape)}) "
                         f"but the image x has {x_shape[3]} (shape {tuple(x_shape)})")
    layer = Conv(W_shape[3], tuple(W_shape[:2]), stride, padding)
    pads, (H_out, W_out) = layer.geometry(x_shape[1:])
    return layer.stride, pads, (x_shape[0], H_out, W_out, W_shape[3])


def conv2d_output_shape(
    x_shape: tuple[int, ...], W_shape: tuple[int, ...], stride: Pair = 1, padding: Padding = "VALID"
) -> tuple[int, int, int, int]:
    """Output shape (m, H_out, W_out, C_out) of a convolution, validating the arguments.

    H_out = ⌊(H + top + bottom − kh) / s_h⌋ + 1 and likewise W_out: the number of window
    positions that fit entirely inside the padded image (``layers.Conv.geometry``).
    x_shape: (m, H, W, C_in); W_shape: (kh, kw, C_in, C_out); stride, padding: as for
    `conv2d`.
    """
    return _conv_geometry(_batch_shape(x_shape), tuple(W_shape), stride, padding)[2]


def _check_conv(x, W, b, stride, padding):
    """Validated arrays and geometry of a convolution."""
    x, W, b = _batch(x), jnp.asarray(W), jnp.asarray(b)
    stride, pads, out = _conv_geometry(x.shape, W.shape, stride, padding)
    if b.shape != (W.shape[3],):
        raise ValueError(f"b must have shape (C_out,) = ({W.shape[3]},), matching W of shape "
                         f"{W.shape}, got shape {b.shape}")
    _one_dtype(x=x, W=W, b=b)
    return x, W, b, stride, pads, out


def _pad(x: jax.Array, pads: Pads) -> jax.Array:
    """Zero-pad the spatial axes of an NHWC batch."""
    return jnp.pad(x, ((0, 0), pads[0], pads[1], (0, 0)))


# --------------------------------------------------------------------------- patches


def _window_rows(offset: int, n_out: int, s: int) -> slice:
    """Rows offset, offset + s, ..., offset + (n_out − 1)·s: one window cell at every position."""
    return slice(offset, offset + (n_out - 1) * s + 1, s)


def _patches(x: jax.Array, kh: int, kw: int, n_out: tuple[int, int], stride) -> jax.Array:
    """(m, H, W, C) -> (m, H_out, W_out, kh·kw, C): the window under every output position.

    Cell (p, q) of every window is one strided slice of x, so kh·kw slices gather all
    windows; cells are stacked in row-major (p, q) order. With few channels (C < 8) the
    slices are taken in two rounds, the kw columns of every row first and then kh rows
    of those: XLA's CPU backend copies rows of kw·C numbers much faster than rows of C
    (a 64×64×3 batch of 32, 4×4 windows: 2.3 instead of 5.7 ms).
    """
    (H_out, W_out), (sh, sw) = n_out, stride
    m, _, _, C = x.shape
    if C < 8:
        rows = jnp.concatenate([x[:, :, _window_rows(q, W_out, sw), :] for q in range(kw)],
                               axis=-1)  # (m, H, W_out, kw·C), ordered (q, c)
        cells = jnp.concatenate([rows[:, _window_rows(p, H_out, sh)] for p in range(kh)],
                                axis=-1)  # (m, H_out, W_out, kh·kw·C), ordered (p, q, c)
        return cells.reshape(m, H_out, W_out, kh * kw, C)
    cells = [
        x[:, _window_rows(p, H_out, sh), _window_rows(q, W_out, sw), :]
        for p in range(kh)
        for q in range(kw)
    ]
    return jnp.stack(cells, axis=3)


def _place(g: jax.Array, p: int, q: int, stride, size: tuple[int, int]) -> jax.Array:
    """(m, H_out, W_out, C) -> (m, H, W, C): the adjoint of taking window cell (p, q).

    Value g[:, i, j] goes to row p + i·s_h, column q + j·s_w; every other entry is zero.
    This is a zero padding with s − 1 zeros between entries (interior padding).
    """
    (sh, sw), (H, W) = stride, size
    _, H_out, W_out, _ = g.shape
    rows = (p, H - p - (H_out - 1) * sh - 1, sh - 1)
    cols = (q, W - q - (W_out - 1) * sw - 1, sw - 1)
    return lax.pad(g, jnp.zeros((), g.dtype), ((0, 0, 0), rows, cols, (0, 0, 0)))


def im2col(
    x: ArrayLike, kh: int, kw: int, stride: Pair = 1, padding: Padding = "VALID"
) -> jax.Array:
    """Patches of a batch, one row per output position (image to columns).

    Args:
      x: (m, H, W, C).
      kh, kw: window size.
      stride, padding: as for `conv2d`.

    Returns:
      (m, H_out, W_out, kh·kw·C); the last axis is ordered (p, q, c) row-major, the
      order of `W.reshape(kh * kw * C_in, C_out)` for an HWIO kernel.
    """
    x = _batch(x)
    m, H, W_, C = x.shape
    (sh, sw), pads, (_, H_out, W_out, _) = _conv_geometry(x.shape, (kh, kw, C, 1), stride, padding)
    return _im2col(x, (kh, kw), (sh, sw), pads, (H_out, W_out))


@partial(jax.jit, static_argnames=("kernel", "stride", "pads", "n_out"))
def _im2col(x, kernel, stride, pads, n_out):
    cols = _patches(_pad(x, pads), *kernel, n_out, stride)
    return cols.reshape(*cols.shape[:3], -1)


def col2im(
    cols: ArrayLike,
    x_shape: tuple[int, int, int, int],
    kh: int,
    kw: int,
    stride: Pair = 1,
    padding: Padding = "VALID",
) -> jax.Array:
    """The adjoint of `im2col`: add every patch entry back to the pixel it came from.

    A pixel that lies in several windows receives the sum of their entries; a pixel in
    the padding is cropped away; a pixel that no window covers receives zero.

    Args:
      cols: (m, H_out, W_out, kh·kw·C), ordered as `im2col` returns it.
      x_shape: (m, H, W, C), the shape of the image the patches came from.
      kh, kw, stride, padding: as given to `im2col`.

    Returns:
      (m, H, W, C).
    """
    cols = jnp.asarray(cols)
    m, H, W_, C = x_shape
    (sh, sw), pads, out = _conv_geometry(tuple(x_shape), (kh, kw, C, 1), stride, padding)
    _, H_out, W_out, _ = out
    expected = (m, H_out, W_out, kh * kw * C)
    if cols.shape != expected:
        raise ValueError(f"cols must have shape {expected}, got {cols.shape}")
    return _col2im(cols.reshape(m, H_out, W_out, kh, kw, C), (H, W_), (sh, sw), pads)


@partial(jax.jit, static_argnames=("size", "stride", "pads"))
def _col2im(cells: jax.Array, size: tuple[int, int], stride, pads: Pads) -> jax.Array:
    """(m, H_out, W_out, kh, kw, C) window cells -> (m, H, W, C), summed where windows overlap."""
    (H, W), ((top, bottom), (left, right)) = size, pads
    kh, kw = cells.shape[3:5]
    padded = (H + top + bottom, W + left + right)
    x_pad = sum(
        _place(cells[:, :, :, p, q, :], p, q, stride, padded) for p in range(kh) for q in range(kw)
    )
    return x_pad[:, top : top + H, left : left + W, :]


# --------------------------------------------------------------------------- conv2d forward


def conv2d_sliding(
    x: ArrayLike, W: ArrayLike, b: ArrayLike, stride: Pair = 1, padding: Padding = "VALID"
) -> jax.Array:
    """Convolution as the notes draw it: slide the filter θ across the image.

    At each output position (i, j) take the window x̃[i·s_h : i·s_h + kh, j·s_w : j·s_w + kw]
    of the padded image and compute, for every filter o,

        a = Σ_i Σ_j θ_ij x_ij   (notes, CNN), summed over input channels, plus b[o].

    Python loops over output positions: meant to be read and used on small images.

    Args:
      x: (m, H, W, C_in), a batch; a 3-D single image raises ValueError (add a batch axis
        or vmap a per-example function).
      W: (kh, kw, C_in, C_out), one filter θ per output channel (HWIO).
      b: (C_out,).
      stride: int or (s_h, s_w), each > 0.
      padding: "VALID", "SAME", an int or ((top, bottom), (left, right)); see
        `resolve_padding`.

    Returns:
      z: (m, H_out, W_out, C_out), see `conv2d_output_shape`.
    """
    x, W, b, (sh, sw), pads, (m, H_out, W_out, C_out) = _check_conv(x, W, b, stride, padding)
    kh, kw = W.shape[:2]
    x_pad = _pad(x, pads)
    theta = W[None]  # (1, kh, kw, C_in, C_out): one filter per output channel
    rows = []
    for i in range(H_out):
        row = []
        for j in range(W_out):
            window = x_pad[:, i * sh : i * sh + kh, j * sw : j * sw + kw, :, None]
            a = jnp.sum(theta * window, axis=(1, 2, 3))  # (m, C_out)
            row.append(a + b[None, :])
        rows.append(jnp.stack(row, axis=1))
    return jnp.stack(rows, axis=1)


def conv2d_im2col(
    x: ArrayLike, W: ArrayLike, b: ArrayLike, stride: Pair = 1, padding: Padding = "VALID"
) -> jax.Array:
    """Convolution as one matrix product: z = im2col(x) · W_mat + b.

    Every window becomes a row of kh·kw·C_in numbers (`im2col`); the kernel becomes
    W_mat of shape (kh·kw·C_in, C_out); a = Σ θ_ij x_ij (notes, CNN) for all positions
    and all filters at once is then the product of the two.

    Args and returns as for `conv2d_sliding`.
    """
    x, W, b, stride, pads, out = _check_conv(x, W, b, stride, padding)
    return _conv2d_im2col(x, W, b, stride, pads, out)


@partial(jax.jit, static_argnames=("stride", "pads", "out"))
def _conv2d_im2col(x, W, b, stride, pads, out):
    m, H_out, W_out, C_out = out
    kh, kw, C_in, _ = W.shape
    cols = _patches(_pad(x, pads), kh, kw, (H_out, W_out), stride)
    cols = cols.reshape(m * H_out * W_out, kh * kw * C_in)
    z = cols @ W.reshape(kh * kw * C_in, C_out) + b[None, :]
    return z.reshape(out)


def conv2d_lax(
    x: ArrayLike, W: ArrayLike, b: ArrayLike, stride: Pair = 1, padding: Padding = "VALID"
) -> jax.Array:
    """Convolution with `jax.lax.conv_general_dilated` (NHWC, HWIO -> NHWC).

    XLA's convolution is the same cross-correlation a = Σ θ_ij x_ij (notes, CNN), with
    no kernel flip. Args and returns as for `conv2d_sliding`.
    """
    x, W, b, stride, pads, _ = _check_conv(x, W, b, stride, padding)
    return _conv2d_lax(x, W, b, stride, pads)


@partial(jax.jit, static_argnames=("stride", "pads"))
def _conv2d_lax(x, W, b, stride, pads):
    z = lax.conv_general_dilated(
        x, W, window_strides=stride, padding=pads, dimension_numbers=_DIMENSION_NUMBERS
    )
    return z + b[None, None, None, :]


CONV2D_METHODS: dict[str, Callable[..., jax.Array]] = {
    "sliding": conv2d_sliding,
    "im2col": conv2d_im2col,
    "lax": conv2d_lax,
}


def _method(table: dict[str, Callable], method: str, what: str) -> Callable:
    if method not in table:
        raise ValueError(f"unknown {what} method {method!r}; known: {sorted(table)}")
    return table[method]


def conv2d(
    x: ArrayLike,
    W: ArrayLike,
    b: ArrayLike,
    stride: Pair = 1,
    padding: Padding = "VALID",
    method: str = "lax",
) -> jax.Array:
    """Convolution layer z = W ∗ x + b, computed by the named method.

    Args:
      x: (m, H, W, C_in); W: (kh, kw, C_in, C_out); b: (C_out,).
      stride, padding: see `conv2d_sliding`.
      method: "sliding", "im2col" or "lax" (`CONV2D_METHODS`); all give the same numbers.

    Returns:
      z: (m, H_out, W_out, C_out).
    """
    return _method(CONV2D_METHODS, method, "conv2d")(x, W, b, stride, padding)


# --------------------------------------------------------------------------- conv2d backward


def conv2d_backward_lax(
    x: ArrayLike, W: ArrayLike, delta: ArrayLike, stride: Pair = 1, padding: Padding = "VALID"
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Hand-written backward pass of `conv2d`, written as two more convolutions.

    With δ = ∂L/∂z of shape (m, H_out, W_out, C_out) and x̃ the padded input, the
    forward z[n,i,j,o] = Σ_{p,q,c} W[p,q,c,o] x̃[n, i·s_h + p, j·s_w + q, c] + b[o] gives

        db[o]       = Σ_{n,i,j} δ[n,i,j,o]
        dW[p,q,c,o] = Σ_{n,i,j} x̃[n, i·s_h + p, j·s_w + q, c] δ[n,i,j,o]
        dx̃[n,r,s,c] = Σ_{p,q,o} W[p,q,c,o] δ[n, (r − p)/s_h, (s − q)/s_w, o]
                      (terms with a non-integer or out-of-range index are absent)

    dW is a correlation of x̃ with δ used as the filter, its entries s apart (the
    stride becomes a filter dilation), summed over the batch. dx̃ is a *full*
    correlation of δ, with s − 1 zeros inserted between its entries, with the kernel
    flipped in both spatial axes and its channel axes swapped; the padding is then
    cropped off to give dx. Rows and columns of x̃ below/right of the last window
    (when the stride does not divide the input) are used by no output and get zero.

    Args:
      x: (m, H, W, C_in), the layer's input.
      W: (kh, kw, C_in, C_out).
      delta: (m, H_out, W_out, C_out), ∂L/∂z.
      stride, padding: as given to `conv2d`.

    Returns:
      (dW, db, dx): (kh, kw, C_in, C_out), (C_out,), (m, H, W, C_in). dW and db are
      summed over the m examples; divide by m for the gradient of a mean loss.
    """
    return _conv2d_backward_lax(*_check_backward(x, W, delta, stride, padding))


@partial(jax.jit, static_argnames=("stride", "pads"))
def _conv2d_backward_lax(x, W, delta, stride, pads):
    (sh, sw), ((top, bottom), (left, right)) = stride, pads
    kh, kw, _, _ = W.shape
    _, H, W_, _ = x.shape
    _, H_out, W_out, _ = delta.shape
    # Rows 0 … H_used − 1 of the padded input x̃ lie under some window; the rest (when the
    # stride does not divide) are read by no output and get zero gradient.
    H_used, W_used = (H_out - 1) * sh + kh, (W_out - 1) * sw + kw

    db = jnp.sum(delta, axis=(0, 1, 2))

    # dW: correlate x̃ with δ as the filter, its taps s apart (rhs_dilation). The batch
    # axis n is the contracted "feature" axis and the channel c acts as the "batch" axis.
    # The padding goes into the convolution (faster on XLA CPU than padding x first); the
    # bottom/right pad stops at H_used, W_used, and where unread rows make x̃ longer than
    # that, the extra taps p ≥ kh, q ≥ kw that come out are dropped.
    # Both operands are transposed explicitly into the canonical NHWC / HWIO layouts
    # (x as (c, r, s, n), δ as (i, j, n, o)) instead of reading them through dimension
    # numbers: inside a lax.scan XLA's CPU backend keeps such a convolution in the
    # layouts it was given and runs it on a generic path, many times slower.
    dW = lax.conv_general_dilated(
        x.transpose(3, 1, 2, 0),  # (c, r, s, n): c is the batch, n the feature
        delta.transpose(1, 2, 0, 3),  # (i, j, n, o): the filter, n in, o out
        window_strides=(1, 1),
        padding=((top, max(H_used - H - top, 0)), (left, max(W_used - W_ - left, 0))),
        rhs_dilation=(sh, sw),
        dimension_numbers=_DIMENSION_NUMBERS,
    )[:, :kh, :kw].transpose(1, 2, 0, 3)  # (c, p, q, o) -> (p, q, c, o)

    # dx̃: δ with s − 1 zeros between entries (lhs_dilation), padded by kh − 1 on each side
    # (a full correlation), against the kernel flipped in both spatial axes with its
    # channel axes swapped (read as H W O I).
    dx_used = lax.conv_general_dilated(
        delta,
        W[::-1, ::-1, :, :].transpose(0, 1, 3, 2),  # HWIO with I = C_out, O = C_in
        window_strides=(1, 1),
        padding=((kh - 1, kh - 1), (kw - 1, kw - 1)),
        lhs_dilation=(sh, sw),
        dimension_numbers=_DIMENSION_NUMBERS,
    )  # (m, H_used, W_used, C_in)
    # Zero rows for the part of x̃ no window reads, then crop the padding off. Done as an
    # explicit pad and slice: folding it into the convolution as negative padding (as
    # jax.grad does) can make XLA's CPU compiler abort for some geometries.
    Hp, Wp = H + top + bottom, W_ + left + right
    dx_pad = _pad(dx_used, ((0, Hp - H_used), (0, Wp - W_used)))
    dx = dx_pad[:, top : top + H, left : left + W_, :]
    return dW, db, dx


def conv2d_backward_im2col(
    x: ArrayLike, W: ArrayLike, delta: ArrayLike, stride: Pair = 1, padding: Padding = "VALID"
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Hand-written backward pass of `conv2d_im2col`, as matrix products.

    The forward is Z = X_col W_mat + b with X_col = im2col(x) of shape
    (m·H_out·W_out, kh·kw·C_in). For the matrix product the notes' rules hold:

        db     = Σ_rows Δ               (Δ = δ as a (m·H_out·W_out, C_out) matrix)
        dW_mat = X_colᵀ Δ
        dX_col = Δ W_matᵀ,   dx = col2im(dX_col)

    where `col2im` adds every patch entry back to the pixel it was copied from (a pixel
    in several windows collects all their contributions). The same equations as
    `conv2d_backward_lax`; args and returns as there (dW, db summed over the batch).
    """
    return _conv2d_backward_im2col(*_check_backward(x, W, delta, stride, padding))


@partial(jax.jit, static_argnames=("stride", "pads"))
def _conv2d_backward_im2col(x, W, delta, stride, pads):
    kh, kw, C_in, C_out = W.shape
    m, H_out, W_out, _ = delta.shape
    K = kh * kw * C_in
    X_col = _patches(_pad(x, pads), kh, kw, (H_out, W_out), stride).reshape(-1, K)
    Delta = delta.reshape(-1, C_out)
    W_mat = W.reshape(K, C_out)

    db = jnp.sum(Delta, axis=0)
    dW = (X_col.T @ Delta).reshape(kh, kw, C_in, C_out)
    dX_col = (Delta @ W_mat.T).reshape(m, H_out, W_out, kh, kw, C_in)
    dx = _col2im(dX_col, x.shape[1:3], stride, pads)
    return dW, db, dx


def _check_backward(x, W, delta, stride, padding):
    """Validated (x, W, delta), stride pair and pads."""
    x, W = _batch(x), jnp.asarray(W)
    stride, pads, out = _conv_geometry(x.shape, W.shape, stride, padding)
    delta = _check_delta(delta, out)
    _one_dtype(x=x, W=W, delta=delta)
    return x, W, delta, stride, pads


CONV2D_BACKWARD_METHODS: dict[str, Callable[..., tuple[jax.Array, jax.Array, jax.Array]]] = {
    "lax": conv2d_backward_lax,
    "im2col": conv2d_backward_im2col,
}


def conv2d_backward(
    x: ArrayLike,
    W: ArrayLike,
    delta: ArrayLike,
    stride: Pair = 1,
    padding: Padding = "VALID",
    method: str = "lax",
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Hand-written backward pass of `conv2d`: (dW, db, dx) from δ = ∂L/∂z.

        db = Σ δ,   dW = x̃ ⋆ δ (stride as dilation),   dx = crop(δ↑s ⋆_full flip(W)ᵀ)

    See `conv2d_backward_lax` for the equations in full; method "lax" computes them as
    two convolutions, "im2col" as matrix products and `col2im`. No autodiff is used.

    Args:
      x: (m, H, W, C_in); W: (kh, kw, C_in, C_out); delta: (m, H_out, W_out, C_out).
      stride, padding: as given to `conv2d`.
      method: "lax" or "im2col" (`CONV2D_BACKWARD_METHODS`).

    Returns:
      (dW, db, dx) of shapes (kh, kw, C_in, C_out), (C_out,), (m, H, W, C_in); dW and db
      are summed over the batch (divide by m for a mean loss).
    """
    fn = _method(CONV2D_BACKWARD_METHODS, method, "conv2d_backward")
    return fn(x, W, delta, stride, padding)


# --------------------------------------------------------------------------- pooling


def pool_output_shape(
    x_shape: tuple[int, ...], window: Pair, stride: Pair | None = None
) -> tuple[int, int, int, int]:
    """Output shape (m, H_out, W_out, C) of a VALID pooling, validating the arguments.

    H_out = ⌊(H − wh) / s_h⌋ + 1 and likewise W_out; the stride defaults to the window
    (``layers.MaxPool.output``).
    """
    return _pool_geometry(x_shape, window, stride)[2]


def _pool_geometry(x_shape, window, stride):
    x_shape = _batch_shape(x_shape)
    layer = MaxPool(window, stride)
    return layer.window, layer.stride, (x_shape[0], *layer.output(x_shape[1:]), x_shape[3])


def _tiles(x: jax.Array, window: tuple[int, int]) -> jax.Array:
    """(m, H, W, C) -> (m, H_out, wh, W_out, ww, C) for non-overlapping windows (stride = window).

    The rows and columns that no VALID window reaches (H mod wh of them at the bottom,
    W mod ww at the right) are cropped off first; the windows are then a reshape, with
    no gather: window (i, j) is [:, i, :, j, :, :].
    """
    m, H, W, C = x.shape
    wh, ww = window
    H_out, W_out = H // wh, W // ww
    return x[:, : H_out * wh, : W_out * ww, :].reshape(m, H_out, wh, W_out, ww, C)


def _untiles(t: jax.Array, size: tuple[int, int]) -> jax.Array:
    """The adjoint of `_tiles`: (m, H_out, wh, W_out, ww, C) -> (m, H, W, C).

    The cropped rows and columns get zeros.
    """
    m, H_out, wh, W_out, ww, C = t.shape
    (H, W) = size
    x = t.reshape(m, H_out * wh, W_out * ww, C)
    return jnp.pad(x, ((0, 0), (0, H - H_out * wh), (0, W - W_out * ww), (0, 0)))


def _tiled(window, stride) -> bool:
    """Whether the windows do not overlap and leave no gaps (stride = window): then a
    crop and a reshape (`_tiles`) gather every window, the fast path of pooling."""
    return tuple(stride) == tuple(window)


def max_pool(x: ArrayLike, window: Pair, stride: Pair | None = None) -> jax.Array:
    """Max pooling: each output is the largest entry of its window, channel by channel.

    Args:
      x: (m, H, W, C).
      window: int or (wh, ww).
      stride: int or (s_h, s_w); defaults to the window (non-overlapping windows).
        Windows are VALID: those that would leave the image are dropped.

    Returns:
      (m, H_out, W_out, C), see `pool_output_shape`.
    """
    x = _batch(x)
    window, stride, _ = _pool_geometry(x.shape, window, stride)
    return _max_pool(x, window, stride)


@partial(jax.jit, static_argnames=("window", "stride"))
def _max_pool(x, window, stride):
    if _tiled(window, stride):
        # The maximum of the window's wh·ww cells, pairwise (as a balanced tree) rather
        # than jnp.max over the window axes: the same values, and jax.grad routes δ with
        # a select per pair instead of comparing every entry with the maximum, counting
        # ties and dividing (cnn_color's 61×61×16 pool: forward 0.76 -> 0.29 ms, forward
        # and backward 4.0 -> 1.5 ms). Ties split δ by halves instead of evenly.
        t = _tiles(x, window)
        cells = [t[:, :, p, :, q] for p in range(window[0]) for q in range(window[1])]
        while len(cells) > 1:
            pairs = [jnp.maximum(a, b) for a, b in zip(cells[::2], cells[1::2], strict=False)]
            cells = pairs + cells[len(pairs) * 2:]
        return cells[0]
    # Overlapping or gapped windows. A concrete -inf lets lax recognise a max pool, which
    # jax.grad can differentiate.
    init = np.array(-np.inf, dtype=x.dtype)
    return lax.reduce_window(x, init, lax.max, (1, *window, 1), (1, *stride, 1), "VALID")


def max_pool_backward(
    x: ArrayLike, delta: ArrayLike, window: Pair, stride: Pair | None = None
) -> jax.Array:
    """Hand-written backward pass of `max_pool`: δ goes to the maximum of each window.

        dx[n, r, s, c] = Σ over windows (i, j) whose argmax is (r, s): δ[n, i, j, c]

    Only the winning entry influences the output, so it receives the whole δ; the other
    entries of the window receive nothing. Tie rule: when several entries share the
    maximum, the FIRST in row-major window order (top row first, then left to right)
    receives all of δ. (`jax.grad` of `max_pool` splits ties evenly when stride = window,
    a max over a reshape, and may place them differently through `lax.reduce_window`
    otherwise; away from ties the two agree.) With overlapping windows an entry that
    wins several windows collects the sum of their δ.

    When stride = window the windows are a crop and a reshape of x, and δ is routed by
    comparing each window's first argmax with the cell index: elementwise work only.
    Otherwise the windows are gathered with strided slices and δ placed back with pads.

    Args:
      x: (m, H, W, C), the layer's input.
      delta: (m, H_out, W_out, C), ∂L/∂(pooled output).
      window, stride: as given to `max_pool`.

    Returns:
      dx: (m, H, W, C).
    """
    x = _batch(x)
    window, stride, out = _pool_geometry(x.shape, window, stride)
    delta = _check_delta(delta, out)
    _one_dtype(x=x, delta=delta)
    return _max_pool_backward(x, delta, window, stride)


@partial(jax.jit, static_argnames=("window", "stride"))
def _max_pool_backward(x, delta, window, stride):
    (wh, ww), (m, H_out, W_out, C) = window, delta.shape
    zero = jnp.zeros((), x.dtype)
    if _tiled(window, stride):
        # Windows are a reshape: put each window's wh·ww cells last, take the first
        # argmax, route δ to it, and reshape back (no gather or scatter).
        cells = _tiles(x, window).transpose(0, 1, 3, 5, 2, 4).reshape(m, H_out, W_out, C, -1)
        winner = jnp.argmax(cells, axis=-1)  # jnp.argmax returns the first maximum
        cell = jnp.arange(wh * ww).reshape(1, 1, 1, 1, -1)
        routed = jnp.where(winner[..., None] == cell, delta[..., None], zero)
        tiles = routed.reshape(m, H_out, W_out, C, wh, ww).transpose(0, 1, 4, 2, 5, 3)
        return _untiles(tiles, x.shape[1:3])
    windows = _patches(x, wh, ww, (H_out, W_out), stride)  # (m, H_out, W_out, wh·ww, C)
    winner = jnp.argmax(windows, axis=3)
    return sum(
        _place(jnp.where(winner == p * ww + q, delta, zero), p, q, stride, x.shape[1:3])
        for p in range(wh)
        for q in range(ww)
    )


def avg_pool(x: ArrayLike, window: Pair, stride: Pair | None = None) -> jax.Array:
    """Average pooling: each output is the mean of its window, channel by channel.

    Args and returns as for `max_pool`.
    """
    x = _batch(x)
    window, stride, _ = _pool_geometry(x.shape, window, stride)
    return _avg_pool(x, window, stride)


@partial(jax.jit, static_argnames=("window", "stride"))
def _avg_pool(x, window, stride):
    if _tiled(window, stride):
        return jnp.mean(_tiles(x, window), axis=(2, 4))
    total = lax.reduce_window(
        x, np.zeros((), x.dtype), lax.add, (1, *window, 1), (1, *stride, 1), "VALID"
    )
    return total / (window[0] * window[1])


def avg_pool_backward(
    x_shape: tuple[int, int, int, int],
    delta: ArrayLike,
    window: Pair,
    stride: Pair | None = None,
) -> jax.Array:
    """Hand-written backward pass of `avg_pool`: δ is spread evenly over its window.

        dx[n, r, s, c] = Σ over windows (i, j) containing (r, s): δ[n, i, j, c] / (wh·ww)

    Args:
      x_shape: (m, H, W, C), the shape of the layer's input (its values are not needed).
      delta: (m, H_out, W_out, C), ∂L/∂(pooled output); its dtype is the result's.
      window, stride: as given to `avg_pool`.

    Returns:
      dx: (m, H, W, C).
    """
    x_shape = tuple(x_shape)
    window, stride, out = _pool_geometry(x_shape, window, stride)
    delta = _check_delta(delta, out)
    return _avg_pool_backward(delta, x_shape[1:3], window, stride)


@partial(jax.jit, static_argnames=("size", "window", "stride"))
def _avg_pool_backward(delta, size, window, stride):
    (wh, ww) = window
    share = delta / (wh * ww)
    if _tiled(window, stride):
        m, H_out, W_out, C = delta.shape
        tiles = jnp.broadcast_to(share[:, :, None, :, None, :], (m, H_out, wh, W_out, ww, C))
        return _untiles(tiles, size)
    return sum(_place(share, p, q, stride, size) for p in range(wh) for q in range(ww))


# --------------------------------------------------------------------------- flatten


def flatten(x: ArrayLike) -> jax.Array:
    """(m, H, W, C) -> (m, H·W·C), row-major in (H, W, C) order.

    The notes' example: a 64 × 64 × 3 image becomes a vector of 12,288 numbers. Entry
    (r, s, c) of an image lands at index (r·W + s)·C + c.
    """
    x = _batch(x)
    return x.reshape(x.shape[0], -1)


def unflatten(a: ArrayLike, image_shape: tuple[int, int, int]) -> jax.Array:
    """(m, H·W·C) -> (m, H, W, C), the inverse of `flatten`.

    Args:
      a: (m, H·W·C).
      image_shape: (H, W, C) of one image.
    """
    a = jnp.asarray(a)
    image_shape = tuple(image_shape)
    size = int(np.prod(image_shape))
    if len(image_shape) != 3 or a.ndim != 2 or a.shape[1] != size:
        raise ValueError(
            f"a must have shape (m, H·W·C) for image_shape (H, W, C) = {image_shape}, "
            f"got a of shape {a.shape}"
        )
    return a.reshape(a.shape[0], *image_shape)


def flatten_backward(x_shape: tuple[int, int, int, int], delta: ArrayLike) -> jax.Array:
    """Hand-written backward pass of `flatten`: δ (m, H·W·C) reshaped back to x_shape.

    Flatten only moves numbers, so each gradient entry returns to where it came from.
    """
    x_shape = _batch_shape(x_shape, "x_shape")
    return unflatten(delta, x_shape[1:]).reshape(x_shape)
