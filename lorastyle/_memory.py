"""How much memory this process may still take: so that work too large is refused in one line, not killed."""

from __future__ import annotations

import os
import resource

from .errors import NotEnoughMemoryError

__all__ = ["available_bytes", "check_fits"]


def available_bytes() -> int | None:
    """Bytes this process may still allocate: the smaller of the system's available memory
    (``MemAvailable`` of ``/proc/meminfo``) and what its address-space limit leaves; None where neither
    is known.

    Returns
    -------
    int or None
    """
    known = []
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    known.append(int(line.split()[1]) * 1024)
                    break
    except (OSError, ValueError, IndexError):
        pass
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft != resource.RLIM_INFINITY:
        try:
            with open("/proc/self/statm") as fh:
                used = int(fh.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")  # address space in use
        except (OSError, ValueError, IndexError):
            used = 0
        known.append(max(0, soft - used))
    return min(known) if known else None


def check_fits(need: int, path: str, what: str, hint: str) -> None:
    """Refuse work that needs more than :func:`available_bytes`.

    Parameters
    ----------
    need : int
        Bytes the work needs, estimated.
    path : str
        What the work is about (the error's path).
    what : str
        The work, in words.
    hint : str
        What the user can do instead.

    Raises
    ------
    NotEnoughMemoryError
        When ``need`` exceeds the memory available.
    """
    have = available_bytes()
    if have is not None and need > have:
        raise NotEnoughMemoryError(
            path, f"{what} needs about {need / 2**30:.1f} GiB of memory and {have / 2**30:.1f} GiB is available; {hint}"
        )
