"""The study runners set process-wide state meant for their own processes (``TQDM_DISABLE``
in the environment): each test here gets the environment back as it found it, so nothing
leaks into the tests that run after it in the same worker."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest


@pytest.fixture(autouse=True)
def _restore_environment() -> Iterator[None]:
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)
