"""Skip a test that cannot run here, except under CI=true, where nothing may skip silently."""

from __future__ import annotations

import os

import pytest

__all__ = ["unavailable"]


def unavailable(why: str) -> None:
    """Fail under CI (the CI machine must have what the test needs), skip elsewhere; never returns."""
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"CI=true and {why}", pytrace=False)
    pytest.skip(why)
