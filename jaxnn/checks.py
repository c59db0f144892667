"""Validation at the public entry points: one check of each kind, clear messages.

Every public function and model method validates its arguments here, once, before
anything is computed: names, ints, shapes and dtypes are static (under ``jit`` they
are checked when the function is traced), label values are checked when they are
concrete. The equations themselves check nothing.

Every failure is a ``ValueError`` (a wrong value or shape) or a ``TypeError`` (a wrong
type or dtype) that says what was expected and what came.
"""

import numbers
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np


def is_int(value) -> bool:
    """An integer (Python or numpy), not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool | np.bool_)


def integer(value, what: str, low: int | None = None, high: int | None = None,
            high_name: str | None = None) -> int:
    """``value`` as an int in [low, high] (either bound optional).

    TypeError for anything but an int (a bool, a float, a string), ValueError for an int
    outside the bounds; ``high_name`` names the upper bound in the message (e.g. "m=8").
    """
    if not is_int(value):
        raise TypeError(f"{what} must be an int, got {type(value).__name__} {value!r}")
    top = high if high_name is None else high_name
    bounds = (f" >= {low}" if high is None else f" in [{low}, {top}]") if low is not None \
        else ("" if high is None else f" <= {top}")
    if (low is not None and value < low) or (high is not None and value > high):
        raise ValueError(f"{what} must be an int{bounds}, got {value!r}")
    return int(value)


def pair(value, what: str) -> tuple[int, int]:
    """An int or a pair of ints, each > 0, as a pair (rows, cols)."""
    both = (value, value) if is_int(value) else value
    if not (isinstance(both, tuple | list) and len(both) == 2 and all(map(is_int, both))):
        raise ValueError(f"{what} must be a positive int or a pair of positive ints, "
                         f"got {value!r}")
    if min(both) <= 0:
        raise ValueError(f"{what} must be positive, got {value!r}")
    return int(both[0]), int(both[1])


def shape(value, what: str, ndim: int | None = None) -> tuple[int, ...]:
    """A shape as a tuple of positive ints (of length ``ndim`` when given)."""
    if isinstance(value, str | bytes) or not isinstance(value, Sequence | np.ndarray):
        raise ValueError(f"{what} must be a sequence of positive ints, got {value!r}")
    value = tuple(value)
    if not all(is_int(n) and n > 0 for n in value) or (ndim is not None and len(value) != ndim):
        length = f"{ndim} " if ndim is not None else ""
        raise ValueError(f"{what} must be {length}positive ints, got {value}")
    return tuple(int(n) for n in value)


def key(value) -> None:
    """Raise TypeError unless ``value`` is a ``jax.random`` key (typed or raw uint32 (2,))."""
    dtype = getattr(value, "dtype", None)
    if dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
        return
    if dtype == jnp.uint32 and np.shape(value) == (2,):
        return
    raise TypeError(f"expected a jax.random key (jax.random.key(seed)), got {value!r}")


def floating(dtype, what: str = "parameters") -> np.dtype:
    """``dtype`` as a numpy dtype, which must be floating, else TypeError."""
    dtype = jnp.dtype(dtype)
    if not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(f"{what} must have a floating dtype, got {dtype}")
    return dtype


def array(x, what: str, expected: str) -> None:
    """Raise TypeError unless ``x`` has a shape and a dtype (numpy, JAX, a tracer)."""
    if not hasattr(x, "shape") or not hasattr(x, "dtype"):
        raise TypeError(f"expected {what} as an array of shape {expected} (numpy or JAX), "
                        f"got {type(x).__name__}")


def params_like(params, expected, what: str = "params") -> np.dtype:
    """Raise unless ``params`` has the structure and shapes of ``expected`` and one dtype.

    ``expected``: the pytree of ``jax.ShapeDtypeStruct`` that the model's ``init``
    makes (``jax.eval_shape``). Returns the parameters' common floating dtype.
    """
    got, got_def = jax.tree_util.tree_flatten_with_path(params)
    want, want_def = jax.tree_util.tree_flatten_with_path(expected)
    if got_def != want_def:
        raise ValueError(f"{what} do not have the model's structure: expected "
                         f"{want_def}, got {got_def}")
    dtypes = set()
    for (path, leaf), (_, spec) in zip(got, want, strict=True):
        name = what + jax.tree_util.keystr(path)
        array(leaf, name, str(spec.shape))
        if tuple(np.shape(leaf)) != tuple(spec.shape):
            raise ValueError(f"{name}: expected shape {tuple(spec.shape)}, "
                             f"got {tuple(np.shape(leaf))}")
        dtypes.add(floating(jnp.result_type(leaf), name))
    if len(dtypes) > 1:
        raise TypeError(f"mixed parameter dtypes {sorted(map(str, dtypes))}; "
                        "cast them to one (no silent promotion)")
    return dtypes.pop() if dtypes else None


def inputs(X, example_shape: tuple[int, ...], dtype, what: str = "input",
           batch: bool = True) -> None:
    """Raise unless X is a batch (m, *example_shape) (one example with batch=False) in the
    parameters' ``dtype``."""
    shape = (("m",) if batch else ()) + tuple(example_shape)
    expected = "(" + ", ".join(map(str, shape)) + ("," if len(shape) == 1 else "") + ")"
    array(X, what, expected)
    got = tuple(np.shape(X))
    if len(got) != len(shape) or got[len(shape) - len(example_shape):] != tuple(example_shape):
        raise ValueError(f"expected {what} of shape {expected}, got shape {got}")
    x_dtype = jnp.result_type(X)
    if not jnp.issubdtype(x_dtype, jnp.floating):
        raise TypeError(f"{what} must be floating ({dtype}, as the parameters), got {x_dtype}")
    if dtype is not None and x_dtype != dtype:
        raise TypeError(f"{what} dtype {x_dtype} differs from parameter dtype {dtype}; "
                        "cast one to the other (no silent promotion)")


def labels(Y, k: int, what: str = "labels") -> None:
    """Raise ValueError unless every concrete integer label lies in [0, k)."""
    if isinstance(Y, jax.core.Tracer):
        return
    values = np.asarray(Y)
    if values.size and (values.min() < 0 or values.max() >= k):
        raise ValueError(f"{what} must lie in [0, {k}), got values in "
                         f"[{values.min()}, {values.max()}]")
