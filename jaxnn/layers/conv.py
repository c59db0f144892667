"""The convolution layer of the notes, for one image: a filter θ slid across the image.

The notes' activation of one filter over one window is a = Σ_i Σ_j θ_ij x_ij (a 4 × 4
θ); sliding it across the image, over C input channels, for C_out filters, with a
stride (s_h, s_w) and zero padding, gives for one image x (H, W, C) padded to x̃

    z[i, j, o] = Σ_{p, q, c} W[p, q, c, o] x̃[i·s_h + p, j·s_w + q, c] + b[o]

with kernels HWIO W (kh, kw, C, C_out) and b (C_out,): cross-correlation, as in the
notes (no kernel flip). The sums run over the kernel offsets (p, q): at offset (p, q)
the cells x̃[i·s_h + p, j·s_w + q] of every window form one strided slice of x̃. With
δ = ∂L/∂z of shape (H_out, W_out, C_out), the hand-written backward pass is

    ∂L/∂W[p, q, c, o] = Σ_{i, j} x̃[i·s_h + p, j·s_w + q, c] δ[i, j, o]
    ∂L/∂b[o]          = Σ_{i, j} δ[i, j, o]
    ∂L/∂x̃[i·s_h + p, j·s_w + q, c] += Σ_o W[p, q, c, o] δ[i, j, o]

and ∂L/∂x is ∂L/∂x̃ with the padding cropped off.
"""

from dataclasses import dataclass
from typing import ClassVar

import jax
import jax.numpy as jnp

from jaxnn import checks, initializers
from jaxnn.layers.base import register

Pads = tuple[tuple[int, int], tuple[int, int]]


def resolve_padding(padding, H: int, W: int, kh: int, kw: int, stride=1) -> Pads:
    """Padding as explicit ((top, bottom), (left, right)) numbers of zeros.

    padding: "VALID" (none), "SAME" (output ceil(H / s_h) × ceil(W / s_w), as in
    TensorFlow and ``jax.lax``: the total max((H_out − 1)·s_h + kh − H, 0) split with the
    extra zero at the bottom/right), an int p (p zeros on every side), or explicit
    ((top, bottom), (left, right)).
    """
    sh, sw = checks.pair(stride, "stride")
    if isinstance(padding, str):
        if padding.upper() == "VALID":
            return ((0, 0), (0, 0))
        if padding.upper() == "SAME":
            pads = []
            for size, k, s in ((H, kh, sh), (W, kw, sw)):
                total = max((-(-size // s) - 1) * s + k - size, 0)
                pads.append((total // 2, total - total // 2))
            return (pads[0], pads[1])
        raise ValueError(f"padding must be 'VALID', 'SAME', an int or ((top, bottom), "
                         f"(left, right)), got the unknown string {padding!r}")
    if checks.is_int(padding):
        if padding < 0:
            raise ValueError(f"padding must be >= 0, got {padding}")
        return ((int(padding),) * 2,) * 2
    try:
        (top, bottom), (left, right) = padding
    except (TypeError, ValueError):
        top = None
    if top is None or not all(checks.is_int(v) and v >= 0 for v in (top, bottom, left, right)):
        raise ValueError(f"padding must be 'VALID', 'SAME', an int >= 0 or ((top, bottom), "
                         f"(left, right)) of ints >= 0, got {padding!r}")
    return ((int(top), int(bottom)), (int(left), int(right)))


def cells(x: jax.Array, p: int, q: int, stride, out) -> jax.Array:
    """x[i·s_h + p, j·s_w + q] for every window (i, j): shape (H_out, W_out, C)."""
    (sh, sw), (H_out, W_out) = stride, out
    return x[p: p + sh * (H_out - 1) + 1: sh, q: q + sw * (W_out - 1) + 1: sw]


def window_offsets(kh: int, kw: int):
    """The offsets (p, q) of a kh × kw window in row-major order."""
    return [(p, q) for p in range(kh) for q in range(kw)]


@register
@dataclass(frozen=True)
class Conv:
    """``filters`` kernels of size ``kernel``, moved by ``stride`` over the padded image."""

    filters: int
    kernel: int | tuple[int, int]
    stride: int | tuple[int, int] = 1
    padding: str | int | tuple = "VALID"
    kind: ClassVar[str] = "conv"

    def __post_init__(self):
        checks.integer(self.filters, "filters", 1)
        for name in ("kernel", "stride"):
            object.__setattr__(self, name, checks.pair(getattr(self, name), name))
        if isinstance(self.padding, list):
            object.__setattr__(self, "padding", tuple(tuple(p) for p in self.padding))
        resolve_padding(self.padding, 1, 1, 1, 1, self.stride)  # the form alone

    def geometry(self, input_shape) -> tuple[Pads, tuple[int, int]]:
        """(pads, (H_out, W_out)) for an input (H, W, C), validated."""
        H, W, _ = checks.shape(input_shape, "a convolution's input shape (H, W, C)", 3)
        kh, kw = self.kernel
        pads = resolve_padding(self.padding, H, W, kh, kw, self.stride)
        Hp, Wp = H + sum(pads[0]), W + sum(pads[1])
        if kh > Hp or kw > Wp:
            raise ValueError(f"kernel of size {kh}x{kw} is larger than the padded image of "
                             f"size {Hp}x{Wp} (image {H}x{W}, padding {pads})")
        return pads, ((Hp - kh) // self.stride[0] + 1, (Wp - kw) // self.stride[1] + 1)

    def init(self, key, input_shape, method="he", dtype=jnp.float32, **kwargs):
        """((H_out, W_out, filters), {"W": (kh, kw, C, filters), "b": zeros (filters,)})."""
        _, out = self.geometry(input_shape)
        W = initializers.get(method)(key, self.kernel + (input_shape[2], self.filters),
                                     dtype, **kwargs)
        return out + (self.filters,), {"W": W, "b": jnp.zeros((self.filters,), dtype)}

    def forward(self, params, x: jax.Array):
        """z[i, j, o] = Σ_{p, q, c} W[p, q, c, o] x̃[i·s_h + p, j·s_w + q, c] + b[o].

        x: (H, W, C). Returns (z of shape (H_out, W_out, C_out), cache x).
        """
        pads, out = self.geometry(x.shape)
        x_pad = jnp.pad(x, (*pads, (0, 0)))
        W = params["W"]
        z = sum(cells(x_pad, p, q, self.stride, out) @ W[p, q]
                for p, q in window_offsets(*self.kernel))
        return z + params["b"][None, None, :], x

    def backward(self, params, x: jax.Array, delta: jax.Array):
        """∂L/∂W[p, q] = Σ_ij x̃-cellsᵀ δ, ∂L/∂b = Σ_ij δ, ∂L/∂x̃ += δ W[p, q]ᵀ at the cells."""
        pads, out = self.geometry(x.shape)
        x_pad = jnp.pad(x, (*pads, (0, 0)))
        W, (sh, sw), (H_out, W_out) = params["W"], self.stride, out
        offsets = window_offsets(*self.kernel)
        dW = jnp.stack([jnp.tensordot(cells(x_pad, p, q, self.stride, out), delta, ((0, 1), (0, 1)))
                        for p, q in offsets]).reshape(W.shape)
        dx_pad = jnp.zeros_like(x_pad)
        for p, q in offsets:
            dx_pad = dx_pad.at[p: p + sh * (H_out - 1) + 1: sh,
                               q: q + sw * (W_out - 1) + 1: sw].add(delta @ W[p, q].T)
        (top, _), (left, _) = pads
        dx = dx_pad[top: top + x.shape[0], left: left + x.shape[1]]
        return {"W": dW, "b": jnp.sum(delta, axis=(0, 1))}, dx

    @classmethod
    def example(cls):
        return cls(3, 3, stride=2, padding=1), (6, 5, 2)
