"""Loud test configuration: float64 available, rank promotion raises, warnings are errors.

x64 is enabled so that reference checks run in float64; float32 tests pass float32
arrays explicitly (every function in jaxnn keeps the dtype of its inputs).
"""

import os

os.environ.setdefault("MPLBACKEND", "Agg")

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_rank_promotion", "raise")
