"""get_gpu_status: the nvidia-smi parser on captures, and the tool end to end on real hosts.

The captures in tests/data/nvidia-smi are hand-written from nvidia-smi's documented
CSV format (their names say so; see the README there) until real ones are taken on
a GPU machine. Where a test needs nvidia-smi to *run* on this CPU machine, a
stand-in script replays those captures; its name says so. Everything else is real:
the local transport, the SSH transport to a real sshd, the MCP client.
"""

from __future__ import annotations

import shutil
import stat
from pathlib import Path

import pytest
from mcp import Client

from runners.config import Config, HostConfig
from runners.probes import probe_source
from runners.transports.local import LocalTransport
from runners.transports.ssh_pool import close_all, connection_count
from server.app import build_server
from tests.fixtures.sshd import SSHD
from tests.helpers.ci import unavailable
from tools.context import ToolContext
from tools.gpu_status import (
    APPS_MARK,
    APPS_QUERY,
    FORMAT,
    GPU_QUERY,
    NO_NVIDIA_SMI,
    PROBE,
    GpuStatusInput,
    get_gpu_status,
    parse_apps_csv,
    parse_gpu_csv,
    parse_gpu_status,
    probe_host,
    query_gpu_status,
)
from tools.hosts import ListHostsInput, list_hosts

DATA = Path(__file__).parent.parent / "data" / "nvidia-smi"
HAS_NVIDIA_SMI = shutil.which("nvidia-smi") is not None


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _read(name: str) -> str:
    return (DATA / name).read_text()


# --------------------------------------------------------------------------- parser


def test_query_names_the_documented_fields() -> None:
    assert GPU_QUERY == (
        "--query-gpu=index,uuid,name,memory.total,memory.used,memory.free,utilization.gpu,temperature.gpu"
    )


def test_the_host_probe_runs_exactly_these_queries() -> None:
    """The probe file spells the queries out (it is a program of its own on the host): held to the parser's."""
    text = probe_source(PROBE)
    assert f"nvidia-smi {GPU_QUERY} {FORMAT} || exit $?" in text
    assert f"nvidia-smi {APPS_QUERY} {FORMAT}" in text
    assert f"echo '{APPS_MARK}'" in text and f"exit {NO_NVIDIA_SMI};" in text


def test_h100x8_with_processes() -> None:
    gpus_text = _read("h100x8.query-gpu.handwritten-from-docs.csv")
    apps_text = _read("h100x8.compute-apps.handwritten-from-docs.csv")
    gpus = parse_gpu_status(gpus_text + "--- llm-ops compute-apps ---\n" + apps_text)
    assert [g.index for g in gpus] == list(range(8))
    g0 = gpus[0]
    assert g0.name == "NVIDIA H100 80GB HBM3"
    assert (g0.memory_total_mib, g0.memory_used_mib, g0.memory_free_mib) == (81559, 73112, 7916)
    assert (g0.utilization_pct, g0.temperature_c) == (94, 61)
    assert g0.memory_total_gib == 79.65
    assert [p.process_name for p in g0.processes] == ["VLLM::Worker_TP0"]
    assert gpus[4].processes[0].pid == 2230017 and gpus[4].processes[0].used_memory_mib == 41866
    assert all(not g.processes for g in gpus[5:])


def test_h200_not_supported_and_na_values() -> None:
    gpus = parse_gpu_csv(_read("h200x4.query-gpu.handwritten-from-docs.csv"))
    assert [g.name for g in gpus] == ["NVIDIA H200"] * 4
    assert gpus[0].memory_total_mib == 143771
    assert gpus[3].utilization_pct is None  # [Not Supported]
    apps = parse_apps_csv(_read("h200x4.compute-apps.handwritten-from-docs.csv"))
    assert [(u[-4:], p.pid, p.used_memory_mib) for u, p in apps] == [("b2c3", 48812, 121520), ("b2c3", 50123, None)]


def test_mig_utilization_is_unknown_not_zero() -> None:
    (g,) = parse_gpu_csv(_read("h100-mig.query-gpu.handwritten-from-docs.csv"))
    assert g.utilization_pct is None and g.memory_used_mib == 20241


def test_empty_and_noise() -> None:
    assert parse_apps_csv(_read("idle.compute-apps.handwritten-from-docs.csv")) == []
    assert parse_apps_csv("No running processes found\n") == []
    assert parse_gpu_csv(_read("no-driver.stderr.handwritten-from-docs.txt")) == []
    assert parse_gpu_csv("") == []
    # a comma inside a name does not shift the numbers
    (g,) = parse_gpu_csv("0, GPU-x, Some, Odd Name, 1000, 10, 990, 5, 40\n")
    assert g.name == "Some, Odd Name" and g.memory_total_mib == 1000 and g.temperature_c == 40


# --------------------------------------------------------------------------- through transports


def _stand_in_nvidia_smi(bin_dir: Path, query_file: str, apps_file: str) -> None:
    """A stand-in for nvidia-smi (none runs on a CPU machine): replays captures by query."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    exe = bin_dir / "nvidia-smi"
    exe.write_text(
        "#!/bin/sh\n"
        'case "$1" in\n'
        f"  --query-gpu=*) cat {DATA / query_file} ;;\n"
        f"  --query-compute-apps=*) cat {DATA / apps_file} ;;\n"
        "  *) echo unexpected >&2; exit 2 ;;\n"
        "esac\n"
    )
    exe.chmod(exe.stat().st_mode | stat.S_IXUSR)


@pytest.mark.anyio
async def test_script_joins_both_queries_in_one_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _stand_in_nvidia_smi(
        tmp_path / "bin", "h200x4.query-gpu.handwritten-from-docs.csv", "h200x4.compute-apps.handwritten-from-docs.csv"
    )
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:/usr/bin:/bin")
    gpus, note = await query_gpu_status(LocalTransport(HostConfig(name="local")))
    assert note is None and len(gpus) == 4
    assert gpus[0].processes[0].pid == 48812 and gpus[2].processes[0].used_memory_mib is None


@pytest.mark.anyio
async def test_driver_failure_is_a_note(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    exe = bin_dir / "nvidia-smi"
    exe.write_text(f"#!/bin/sh\ncat {DATA / 'no-driver.stderr.handwritten-from-docs.txt'} >&2\nexit 9\n")
    exe.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    gpus, note = await query_gpu_status(LocalTransport(HostConfig(name="local")))
    assert gpus == [] and note is not None and "exit 9" in note and "NVIDIA driver" in note


@pytest.mark.anyio
async def test_no_gpu_local_host_is_an_empty_list_with_a_note(tmp_path: Path) -> None:
    if HAS_NVIDIA_SMI:  # CI's machines have no GPU: there, an nvidia-smi on PATH is a broken image, not a skip
        unavailable("this machine has nvidia-smi: the no-GPU path cannot be seen here")
    cfg = Config(hosts={"local": HostConfig(name="local", workdir=str(tmp_path))})
    out = await get_gpu_status(ToolContext(config=cfg, state_dir=tmp_path / "state"), GpuStatusInput())
    assert out.gpus == [] and out.note and "nvidia-smi not found" in out.note
    assert out.summary.startswith("local: no GPU")


@pytest.mark.anyio
async def test_over_ssh_and_through_the_mcp_tool(sshd: SSHD, tmp_path: Path) -> None:
    h = sshd.host_config("gpubox", workdir=str(tmp_path / "w"))
    down = sshd.host_config("downbox", port=1)
    cfg = Config(hosts={"gpubox": h, "downbox": down}, default_host="gpubox")
    try:
        app = build_server(state=ToolContext(config=cfg, state_dir=tmp_path / "state"))
        async with Client(app) as c:
            for _ in range(3):
                res = await c.call_tool("get_gpu_status", {"host": "gpubox"})
                assert not res.is_error
                sc = res.structured_content
                assert sc is not None and sc["host"] == "gpubox"
                if not HAS_NVIDIA_SMI:
                    assert sc["gpus"] == [] and "nvidia-smi not found" in sc["note"]
            assert connection_count(h) == 1  # three tool calls, one SSH connection
            res = await c.call_tool("get_gpu_status", {"host": "downbox"})
            assert res.is_error and "refused the connection" in res.content[0].text  # type: ignore[union-attr]
            res = await c.call_tool("list_hosts", {"check": True})
            by = {x["name"]: x for x in res.structured_content["hosts"]}  # type: ignore[index]
            assert by["gpubox"]["reachable"] is True
            assert by["downbox"]["reachable"] is False and "refused" in by["downbox"]["check_note"]
    finally:
        await close_all()


@pytest.mark.anyio
async def test_prober_reports_unreachable_instead_of_raising(sshd: SSHD, tmp_path: Path) -> None:
    bad = sshd.host_config("badkey", identity_file=str(sshd.other_key))
    ctx = ToolContext(config=Config(hosts={"badkey": bad}), state_dir=tmp_path / "state")
    reachable, gpus, note = await probe_host(ctx.transport(bad), bad)
    assert reachable is False and gpus == [] and note and "refused our key" in note
    out = await list_hosts(ctx, ListHostsInput(check=True))
    assert out.hosts[0].reachable is False
    await close_all()
