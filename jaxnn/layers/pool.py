"""Max and average pooling, for one image: one number for each window, channel by channel.

Windows of size (wh, ww) move by a stride (default: the window, so that they tile the
image); windows that would leave the image are dropped (VALID). For one image x
(H, W, C), output (H_out, W_out, C) with H_out = ⌊(H − wh) / s_h⌋ + 1:

    max pool      a[i, j, c] = max_{p, q} x[i·s_h + p, j·s_w + q, c]
    average pool  a[i, j, c] = (1 / (wh·ww)) Σ_{p, q} x[i·s_h + p, j·s_w + q, c]

Backward, from δ = ∂L/∂a: the max pool gives each window's δ to its largest cell; the
average pool spreads it evenly, δ / (wh·ww) to every cell. Tie rule of the max pool:
when several cells share the maximum, the FIRST in row-major window order (top row
first, then left to right) receives all of δ. ``jax.grad`` may split a tie otherwise;
away from ties the two agree, and at a tie the loss has a kink (``kinks``).
"""

from dataclasses import dataclass
from typing import ClassVar

import jax
import jax.numpy as jnp

from jaxnn import checks
from jaxnn.layers.base import register
from jaxnn.layers.conv import cells, window_offsets


@dataclass(frozen=True)
class _Pool:
    window: int | tuple[int, int]
    stride: int | tuple[int, int] | None = None

    def __post_init__(self):
        object.__setattr__(self, "window", checks.pair(self.window, "window"))
        stride = self.window if self.stride is None else checks.pair(self.stride, "stride")
        object.__setattr__(self, "stride", stride)

    def output(self, input_shape) -> tuple[int, int]:
        """(H_out, W_out) for an input (H, W, C), validated."""
        H, W, _ = checks.shape(input_shape, "a pooling layer's input shape (H, W, C)", 3)
        (wh, ww), (sh, sw) = self.window, self.stride
        if wh > H or ww > W:
            raise ValueError(f"window {wh}x{ww} is larger than the input of size {H}x{W}")
        return (H - wh) // sh + 1, (W - ww) // sw + 1

    def init(self, key, input_shape, method="he", dtype=None, **kwargs):
        return self.output(input_shape) + (input_shape[2],), {}

    def windows(self, x: jax.Array) -> jax.Array:
        """Every window's cells, (wh·ww, H_out, W_out, C), in row-major window order."""
        out = self.output(x.shape)
        return jnp.stack([cells(x, p, q, self.stride, out) for p, q in
                          window_offsets(*self.window)])

    def spread(self, x: jax.Array, share) -> jax.Array:
        """Σ over the windows' cells of share(k) placed at cell k of every window: (H, W, C)."""
        (sh, sw), (H_out, W_out) = self.stride, self.output(x.shape)
        dx = jnp.zeros_like(x)
        for k, (p, q) in enumerate(window_offsets(*self.window)):
            dx = dx.at[p: p + sh * (H_out - 1) + 1: sh,
                       q: q + sw * (W_out - 1) + 1: sw].add(share(k))
        return dx


@register
@dataclass(frozen=True)
class MaxPool(_Pool):
    """a[i, j, c] = the largest x in window (i, j) of channel c."""

    kind: ClassVar[str] = "max_pool"

    def forward(self, params, x: jax.Array):
        """a = max over each window. x: (H, W, C). Returns (a (H_out, W_out, C), cache x)."""
        return jnp.max(self.windows(x), axis=0), x

    def backward(self, params, x: jax.Array, delta: jax.Array):
        """δ to the first largest cell of each window, nothing to the others."""
        winner = jnp.argmax(self.windows(x), axis=0)  # the first maximum
        return {}, self.spread(x, lambda k: jnp.where(winner == k, delta, 0))

    def kinks(self, params, x: jax.Array):
        """Which cell wins each window; a change between two evaluations crosses a kink."""
        return jnp.argmax(self.windows(x), axis=0)

    @classmethod
    def example(cls):
        return cls(2, 1), (4, 5, 2)


@register
@dataclass(frozen=True)
class AvgPool(_Pool):
    """a[i, j, c] = the mean of x over window (i, j) of channel c."""

    kind: ClassVar[str] = "avg_pool"

    def forward(self, params, x: jax.Array):
        """a = mean over each window. x: (H, W, C). Returns (a (H_out, W_out, C), cache x)."""
        return jnp.mean(self.windows(x), axis=0), x

    def backward(self, params, x: jax.Array, delta: jax.Array):
        """δ / (wh·ww) to every cell of each window."""
        n = self.window[0] * self.window[1]
        return {}, self.spread(x, lambda k: delta / n)

    @classmethod
    def example(cls):
        return cls(2), (5, 4, 3)
