"""Batched convolution and pooling with their backward passes: ``jaxnn.fast.conv``.

Kept under this name for the code that imports it; the one-image layers of the notes
are ``jaxnn.layers.Conv``, ``MaxPool``, ``AvgPool`` and ``Flatten``.
"""

from jaxnn.fast.conv import *  # noqa: F403
from jaxnn.fast.conv import __all__  # noqa: F401
