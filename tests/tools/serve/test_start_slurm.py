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
from tests.standin_vllm_server import install_standin
from tools.context import ToolContext
from tools.serve.schema import StartServerInput
from tools.serve.start import start_vllm_server

pytestmark = pytest.mark.anyio
MODEL = "Qwen/Qwen2.5-0.5B"


@pytest.fixture
def state(slurm_cluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ToolContext:
    """One SLURM host (2 GPUs per node, the test cluster's default partition) whose `vllm` is the stand-in."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    env = {**install_standin(tmp_path / "vllm"), "STANDIN_VLLM_TOKEN_DELAY_S": "0.001"}
    host = HostConfig(
        name="cluster",
        launcher="slurm",
        workdir=str(tmp_path / "work"),
        gpus="H100:2",
        env=env,
        slurm=SlurmConfig(partition=slurm_cluster.partitions[0], time_limit="00:10:00"),
    )
    return ToolContext(config=Config(hosts={"cluster": host}), state_dir=tmp_path / "state")


async def test_serve_job_on_slurm_reaches_ready_and_answers(state: ToolContext) -> None:
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


async def test_server_over_two_slurm_tasks_head_serves_headless_joins(state: ToolContext) -> None:
    """The multi-node wiring for real: srun starts the payload twice (2 tasks on the one test node stand
    for 2 nodes); task 0's vLLM gets --node-rank 0 and serves the API only after task 1's headless vLLM
    reached --master-addr/--master-port with --node-rank 1; stopping the job ends both."""
    async with Client(build_server(state=state), mode="auto") as c:
        out = await start_vllm_server(
            state,
            StartServerInput(model=MODEL, max_num_seqs=2),
            tasks_per_node=2,
        )
        assert out.plan.pipeline_parallel_size == 2 and out.plan.tensor_parallel_size == 1, out.plan
        assert "2 vLLM processes with 1 GPU(s) each" in out.plan.reasons[0]
        assert out.command[out.command.index("--nnodes") + 1] == "2"
        assert out.command[out.command.index("--distributed-executor-backend") + 1] == "mp"
        job_dir = Path(out.job_dir)
        try:
            r = await c.call_tool("wait_for_job", {"job_id": out.job_id, "until": "ready", "timeout_s": 90})
            log = (job_dir / "output.log").read_text(errors="replace")
            assert r.structured_content["job"]["state"] == "ready", (r.structured_content, log[-3000:])
            assert "node 1 joined (2/2)" in log, log[-3000:]
            assert "[node 1] (Worker) INFO: headless node 1 of 2 joined" in log, log[-3000:]
            assert "--node-rank 0" in log and "--headless" in log
            q = await c.call_tool("query_model", {"server_job_id": out.job_id, "prompt": "hi", "max_tokens": 3})
            assert not q.is_error, q.content[0].text
            assert q.structured_content["completion_tokens"] == 3
        finally:
            r = await c.call_tool("stop_vllm_server", {"job_id": out.job_id})
            assert not r.is_error, r.content[0].text
        r = await c.call_tool("wait_for_job", {"job_id": out.job_id, "timeout_s": 60})
        assert r.structured_content["job"]["state"] == "cancelled", r.structured_content
