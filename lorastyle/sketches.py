"""Deprecated alias of :mod:`lorastyle.index.sketches` (the index's own representation), kept for one release."""

import warnings

from .index.sketches import *  # noqa: F403
from .index.sketches import __all__  # noqa: F401

warnings.warn(
    "lorastyle.sketches moved to lorastyle.index.sketches; the old name goes in the next release",
    DeprecationWarning,
    stacklevel=2,
)
