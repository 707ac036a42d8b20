"""A vLLM server job on SLURM becomes `ready`, queryable through the endpoint the tool returns.

The cluster is the real single-node SLURM of tests/fixtures/slurm_cluster.py; `vllm` on
the compute node is the test STAND-IN (tests/standin_vllm_server.py). What is real:
sbatch, squeue, the serve payload's readiness checks on the node, the ready marker
read back through the SLURM launcher's one-round-trip observe, and the OpenAI client.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from mcp import Client

from runners.config import Config, HostConfig, SlurmConfig
from server.app import build_server
from server.state import AppState
from tests.standin_vllm_server import install_standin

pytestmark = pytest.mark.anyio
MODEL = "Qwen/Qwen2.5-0.5B"


async def test_serve_job_on_slurm_reaches_ready_and_answers(slurm_cluster, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    env = {**install_standin(tmp_path / "vllm"), "STANDIN_VLLM_TOKEN_DELAY_S": "0.001"}
    host = HostConfig(name="cluster", launcher="slurm", workdir=str(tmp_path / "work"), gpus="H100:2", env=env,
                      slurm=SlurmConfig(partition=slurm_cluster.partitions[0], time_limit="00:10:00"))
    state = AppState(config=Config(hosts={"cluster": host}), state_dir=tmp_path / "state")
    async with Client(build_server(state=state), mode="auto") as c:
        r = await c.call_tool("start_vllm_server", {"model": MODEL, "max_num_seqs": 2})
        assert not r.is_error, r.content[0].text
        job_id = r.structured_content["job_id"]
        try:
            r = await c.call_tool("wait_for_job", {"job_id": job_id, "until": "ready", "timeout_s": 90})
            assert r.structured_content["job"]["state"] == "ready", r.structured_content
            q = await c.call_tool("query_model", {"server_job_id": job_id, "prompt": "hi", "max_tokens": 3})
            assert not q.is_error, q.content[0].text
            assert q.structured_content["completion_tokens"] == 3
        finally:
            r = await c.call_tool("stop_vllm_server", {"job_id": job_id})
            assert not r.is_error, r.content[0].text
