"""What a layer is: the protocol every layer kind follows, and the registry of kinds.

A layer is static configuration (a frozen, hashable dataclass: sizes, strides, names)
with three pure functions, all for ONE example, written side by side in its module:

    init(key, input_shape, method, dtype) -> (output_shape, params)
        shape inference: the shape of a^[l] from the shape of a^[l-1], and the layer's
        parameters (a dict of arrays; ``{}`` for a layer without any)
    forward(params, a_prev) -> (a, cache)
        the notes' equation for this layer; ``cache`` is what backward needs
    backward(params, cache, delta) -> (grads, delta_prev)
        the hand-written backward pass: from δ = ∂L/∂a it returns ∂L/∂params (the
        structure of params) and δ_prev = ∂L/∂a_prev, the δ the layer below receives

and two optional ones: ``kinks(params, cache)``, the pattern (a boolean array) that
says where the forward is not smooth (a ReLU at 0, a max-pool tie), for finite
differences, and the class method ``example()``, a small instance with its input
shape, which ``jaxnn.gradcheck.check_layer`` and the tests use to check every
registered kind against ``jax.vjp`` and finite differences.

``jaxnn.network`` chains layers: one forward loop, one backward loop, whatever the
kinds. A new kind is one new module with a class like those in this package and a
``@register`` on it.
"""

from typing import Any, Protocol, runtime_checkable

import jax

Params = Any  # a pytree of arrays: a dict for one layer, {} when it has none
Shape = tuple[int, ...]


@runtime_checkable
class Layer(Protocol):
    """One layer kind; see the module docstring for what each method means."""

    def init(self, key: jax.Array, input_shape: Shape, method: str = "he",
             dtype=None, **kwargs) -> tuple[Shape, Params]: ...

    def forward(self, params: Params, a_prev: jax.Array) -> tuple[jax.Array, Any]: ...

    def backward(self, params: Params, cache: Any,
                 delta: jax.Array) -> tuple[Params, jax.Array]: ...


REGISTRY: dict[str, type] = {}


def register(cls: type) -> type:
    """Add a layer class to ``REGISTRY`` under its ``kind``; it needs ``example()``."""
    for name in ("init", "forward", "backward", "example"):
        if not callable(getattr(cls, name, None)):
            raise TypeError(f"layer class {cls.__name__} has no {name}()")
    kind = getattr(cls, "kind", cls.__name__.lower())
    if kind in REGISTRY and REGISTRY[kind] is not cls:
        raise ValueError(f"a layer kind {kind!r} is already registered ({REGISTRY[kind]})")
    REGISTRY[kind] = cls
    return cls
