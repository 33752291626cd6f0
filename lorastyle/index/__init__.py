"""A searchable index of a LoRA collection (transitional: being split into one module per job)."""

from ..errors import IndexBusyError  # noqa: F401
from ._old import *  # noqa: F401,F403
from ._old import CACHE_SUFFIX, __all__, _read_one  # noqa: F401
