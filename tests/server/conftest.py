from __future__ import annotations

import pytest

from runners.config import Config, HostConfig


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def local_config(tmp_path) -> Config:
    """One local host whose workdir is a temp dir: tests never touch the user's ~/llm-ops."""
    return Config(hosts={"local": HostConfig(name="local", workdir=str(tmp_path / "work"))}, default_host="local")
