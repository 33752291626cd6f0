"""Fixtures shared by several test folders."""

import pytest


@pytest.fixture(scope="session")
def smoke(tmp_path_factory):
    """The smoke profile built once per session: (folder, build log). About a minute on 2 cores."""
    from lorastyle.collection.build import build_collection
    from lorastyle.collection.profiles import get_profile

    out = tmp_path_factory.mktemp("smoke")
    log = build_collection(get_profile("smoke"), out, progress=False)
    return out, log
