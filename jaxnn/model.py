"""Deprecated module name: ``DenseNetwork`` lives in ``jaxnn.models``."""

from jaxnn.models import GRAD_FORMS, DenseNetwork, Model

__all__ = ["GRAD_FORMS", "DenseNetwork", "Model"]
