"""Loud test configuration: float64 available, rank promotion raises, warnings are errors.

x64 is enabled so that reference checks run in float64; float32 tests pass float32
arrays explicitly (every function in jaxnn keeps the dtype of its inputs).
"""

import os

os.environ.setdefault("MPLBACKEND", "Agg")
# These tests are small programs whose cost is compilation: LLVM at -O0 compiles them
# about 2.5x faster. The semantics are XLA's either way; only the order of float
# additions may differ, which the float32 tolerances below already allow for. Set
# JAXNN_TEST_OPTIMIZE=1 to test the optimised code instead.
if os.environ.get("JAXNN_TEST_OPTIMIZE") != "1":
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0").strip()

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_rank_promotion", "raise")
