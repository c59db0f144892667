"""Loud test configuration: float64 available, rank promotion raises, warnings are errors;
compiled programs cached on disk between runs.

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

# A persistent compilation cache, shared by both xdist workers and by the subprocesses
# the tests start (they inherit the environment): a program compiled once is loaded
# afterwards, by another worker or by the next run. The key is XLA's (the program, the
# flags, the jax version), so a changed program compiles afresh. JAXNN_TEST_CACHE names
# another folder; JAXNN_TEST_CACHE=off compiles everything every time.
_cache = os.environ.get("JAXNN_TEST_CACHE") or os.path.join(
    os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "jaxnn", "xla-tests")
if _cache != "off":
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache
    os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"
    jax.config.update("jax_compilation_cache_dir", _cache)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
