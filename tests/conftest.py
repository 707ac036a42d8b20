"""Fixtures shared by the job tests: a host per transport, its config, and an engine.

Job tests are parametrized over ``JOB_TRANSPORTS`` so the SSH transport joins by
adding one entry (and a branch in ``job_host``) once tests/fixtures/sshd.py can
hand out a host; the tests themselves do not change.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from runners.config import Config, HostConfig
from runners.engine import JobEngine

pytest_plugins = ["tests.fixtures.sshd", "tests.fixtures.slurm_cluster"]

JOB_TRANSPORTS = ["local", "ssh"]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(params=JOB_TRANSPORTS)
def job_host(request: pytest.FixtureRequest, tmp_path: Path) -> HostConfig:
    """A host that allows commands, with its workdir in this test's temp dir."""
    if request.param == "local":
        return HostConfig(
            name="local",
            workdir=str(tmp_path / "work"),
            allow_scripts=True,
            secrets=["LLM_OPS_TEST_SECRET"],
            env={"LLM_OPS_TEST_HOST_ENV": "host-env"},
        )
    if request.param == "ssh":  # a real sshd on 127.0.0.1 (tests/fixtures/sshd.py)
        sshd = request.getfixturevalue("sshd")
        return sshd.host_config(
            "ssh",
            workdir=str(tmp_path / "work"),
            allow_scripts=True,
            secrets=["LLM_OPS_TEST_SECRET"],
            env={"LLM_OPS_TEST_HOST_ENV": "host-env"},
        )
    raise NotImplementedError(request.param)


@pytest.fixture
def job_config(job_host: HostConfig) -> Config:
    return Config(hosts={job_host.name: job_host}, default_host=job_host.name)


@pytest.fixture
async def engine(job_config: Config, tmp_path: Path) -> AsyncIterator[JobEngine]:
    eng = JobEngine(
        job_config, tmp_path / "state", environ={"LLM_OPS_TEST_SECRET": "s3cr3t-value-42"}, cancel_grace_s=3.0
    )
    try:
        yield eng
    finally:
        await eng.aclose()
