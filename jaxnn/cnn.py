"""Deprecated module name: ``CNN`` and its layer specs live in ``jaxnn.models``."""

from jaxnn.layers import AvgPool, Conv, MaxPool
from jaxnn.models import CNN, Pool

__all__ = ["CNN", "AvgPool", "Conv", "MaxPool", "Pool"]
