"""What a process may still allocate, against the limits set on a child process."""

import subprocess
import sys

import pytest

from lorastyle._memory import available_bytes, check_fits
from lorastyle.errors import NotEnoughMemoryError


def test_an_address_space_limit_bounds_what_is_available():
    code = (
        "import resource; resource.setrlimit(resource.RLIMIT_AS, (3 << 30, resource.RLIM_INFINITY));"
        "from lorastyle._memory import available_bytes; print(available_bytes())"
    )
    have = int(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
    assert 0 < have < 3 << 30
    unlimited = available_bytes()
    assert unlimited is None or unlimited > 0


def test_work_larger_than_what_is_available_is_refused_with_both_sizes(monkeypatch):
    import lorastyle._memory as memory

    monkeypatch.setattr(memory, "available_bytes", lambda: 2 << 30)
    check_fits(1 << 30, "family", "mapping", "map fewer files")  # fits: nothing happens
    with pytest.raises(
        NotEnoughMemoryError, match=r"mapping needs about 3\.0 GiB of memory and 2\.0 GiB is available; map fewer"
    ):
        check_fits(3 << 30, "family", "mapping", "map fewer files")
    with pytest.raises(MemoryError):  # what a caller of numpy code expects
        check_fits(3 << 30, "family", "mapping", "map fewer files")
