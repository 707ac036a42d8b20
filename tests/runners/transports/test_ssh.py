"""The SSH transport against a real OpenSSH sshd on 127.0.0.1 (tests/fixtures/sshd.py).

What is proved here, each against the real server: jobs submitted, followed and
cancelled over SSH; host keys verified (wrong, unknown, missing known_hosts: all
refused, with the command that fixes it); a bad client key refused clearly; a
connection dropped under a running job (sshd's connection child killed, or sshd
restarted) does not stop the job, the next call reconnects, logs continue from the
same offset and nothing is submitted twice; unreachable hosts fail fast; status of
many jobs is one round trip; one connection serves many calls; port forwards (also
through a jump host) reach a port as the host sees it.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from pathlib import Path

import pytest

from runners.config import Config, HostConfig
from runners.engine import JobEngine
from runners.errors import AuthError, ConfigError, HostKeyError, HostUnreachable
from runners.spec import JobSpec
from runners.states import JobState
from runners.transports.ssh import SSHTransport
from runners.transports.ssh_hosts import register_hosts
from runners.transports.ssh_pool import close_all, connection_count
from tests.fixtures.sshd import SSHD

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def host(sshd: SSHD, tmp_path: Path) -> HostConfig:
    return sshd.host_config("sshbox", workdir=str(tmp_path / "remote-work"))


@pytest.fixture
async def engine(host: HostConfig, tmp_path: Path):
    eng = JobEngine(Config(hosts={host.name: host}, default_host=host.name), tmp_path / "state", environ={})
    try:
        yield eng
    finally:
        await eng.aclose()
        await close_all()


class CountingSSH(SSHTransport):
    """The real SSHTransport, counting commands (each one is a channel: one round trip)."""

    runs: list[tuple[str, ...]]

    def __init__(self, host: HostConfig) -> None:
        super().__init__(host)
        self.runs = []

    async def run(self, argv, **kw):  # type: ignore[no-untyped-def]
        self.runs.append(tuple(argv))
        return await super().run(argv, **kw)


def _out(text: str) -> list[str]:
    """The job's own lines (without the engine's ``[llm-ops]`` notes)."""
    return [ln for ln in text.splitlines() if not ln.startswith("[llm-ops]")]


def _lines_job(n: int, delay: float) -> JobSpec:
    script = f'for i in $(seq 1 {n}); do echo "line $i"; sleep {delay}; done'
    return JobSpec(kind="command", argv=["bash", "-c", script])


# --------------------------------------------------------------------------- basics


async def test_argv_reaches_the_host_verbatim(host: HostConfig) -> None:
    t = SSHTransport(host)
    nasty = ["a b", "$(id -u)", "; echo pwned", "'quoted'", '"dq"', "*", "\\back"]
    res = await t.run(["printf", "%s\\n", *nasty])
    assert res.rc == 0
    assert res.out.splitlines() == nasty
    res = await t.run(["sh", "-c", "exit 7"])
    assert res.rc == 7
    res = await t.run(["sh", "-c", "kill -TERM $$"])
    assert res.rc == -15  # as LocalTransport reports a signal
    res = await t.run(["cat"], input=b"stdin \x00 bytes")
    assert res.stdout == b"stdin \x00 bytes"
    await close_all()


async def test_files_over_sftp(host: HostConfig, tmp_path: Path) -> None:
    t = SSHTransport(host)
    wd = await t.expand_path(host.workdir)
    assert wd == str(tmp_path / "remote-work")
    home = await t.expand_path("~")
    assert home.startswith("/") and (await t.expand_path("~/x")) == f"{home}/x"
    await t.mkdir(f"{wd}/a/b")
    await t.write_file(f"{wd}/a/b/env", b"HF_TOKEN=hf_secret\n", 0o600)
    await t.write_file(f"{wd}/a/b/run.sh", b"#!/bin/sh\n", 0o700)
    assert os.stat(f"{wd}/a/b/env").st_mode & 0o777 == 0o600
    assert os.stat(f"{wd}/a/b/run.sh").st_mode & 0o777 == 0o700
    st = await t.stat(f"{wd}/a/b/env")
    assert st is not None and st.size == 19 and not st.is_dir and st.mode == 0o600
    assert (await t.stat(f"{wd}/a")).is_dir  # type: ignore[union-attr]
    assert await t.stat(f"{wd}/nope") is None
    assert await t.file_size(f"{wd}/nope") is None
    assert await t.read_range(f"{wd}/a/b/env", 3, 5) == b"TOKEN"
    assert await t.read_range(f"{wd}/nope", 0, 10) == b""
    assert await t.list_dir(f"{wd}/a/b") == ["env", "run.sh"]
    assert await t.exists(f"{wd}/a/b/env") and not await t.exists(f"{wd}/zz")
    await t.remove(f"{wd}/a", recursive=True)
    assert not await t.exists(f"{wd}/a")
    await t.remove(f"{wd}/a", recursive=True)  # already gone: fine
    await close_all()


# --------------------------------------------------------------------------- jobs


async def test_job_submitted_followed_and_cancelled(engine: JobEngine, host: HostConfig) -> None:
    r = await engine.submit(_lines_job(600, 0.05))
    assert r.created and r.job is not None
    view, reached = await engine.wait(r.job_id, until="running", timeout_s=10)
    assert reached, view
    # follow: the log grows, read by offset
    chunk = await engine.read_log(r.job_id, offset=0)
    for _ in range(50):
        if "line 3" in chunk.text:
            break
        await asyncio.sleep(0.05)
        more = await engine.read_log(r.job_id, offset=chunk.next_offset)
        chunk = chunk.model_copy(update={"text": chunk.text + more.text, "next_offset": more.next_offset})
    assert _out(chunk.text)[:3] == ["line 1", "line 2", "line 3"]
    pid = int((await SSHTransport(host).read_range(f"{r.job_dir}/pid", 0, 32)).decode())
    assert Path(f"/proc/{pid}").exists()  # the job really runs "on the host"
    view = await engine.cancel(r.job_id, grace_s=2)
    assert view.state is JobState.CANCELLED
    for _ in range(100):
        if not Path(f"/proc/{pid}").exists():
            break
        await asyncio.sleep(0.02)
    assert not Path(f"/proc/{pid}").exists()


async def test_job_succeeds_and_secrets_stay_in_the_env_file(host: HostConfig, tmp_path: Path) -> None:
    h = host.model_copy(update={"secrets": ["HF_TOKEN"]})
    eng = JobEngine(Config(hosts={h.name: h}), tmp_path / "state", environ={"HF_TOKEN": "hf_topsecret123"})
    try:
        spec = JobSpec(kind="command", argv=["bash", "-c", 'echo "token is $HF_TOKEN"; echo done'])
        r = await eng.submit(spec)
        view, reached = await eng.wait(r.job_id, timeout_s=20)
        assert reached and view.state is JobState.SUCCEEDED, view
        t = SSHTransport(h)
        job_json = (await t.read_range(f"{r.job_dir}/job.json", 0, 1 << 20)).decode()
        assert "hf_topsecret123" not in job_json
        env = await t.stat(f"{r.job_dir}/env")
        assert env is not None and env.mode == 0o600
        log = await eng.read_log(r.job_id, offset=0)
        assert "done" in log.text and "hf_topsecret123" not in log.text  # redacted on the way out
        assert "hf_topsecret123" not in r.model_dump_json() + view.model_dump_json()
    finally:
        await eng.aclose()
        await close_all()


@pytest.mark.parametrize("drop", ["kill_connection", "restart_sshd"])
async def test_connection_dropped_mid_job(drop: str, engine: JobEngine, host: HostConfig, sshd: SSHD) -> None:
    r = await engine.submit(_lines_job(40, 0.05))
    await engine.wait(r.job_id, until="running", timeout_s=10)
    await asyncio.sleep(0.4)
    first = await engine.read_log(r.job_id, offset=0)
    assert _out(first.text)[0] == "line 1"
    assert connection_count(host) == 1

    if drop == "kill_connection":
        assert sshd.kill_connections() >= 1
    else:
        sshd.restart()

    # The job keeps running on the host; the next status call reconnects by itself.
    view = await engine.status(r.job_id)
    assert view.state is JobState.RUNNING, view
    assert connection_count(host) == 2
    # Logs continue from the same offset: nothing lost, nothing repeated.
    view, reached = await engine.wait(r.job_id, timeout_s=20)
    assert reached and view.state is JobState.SUCCEEDED, view
    rest = await engine.read_log(r.job_id, offset=first.next_offset, max_bytes=1 << 20)
    assert rest.offset == first.next_offset
    whole = first.text + rest.text
    assert _out(whole) == [f"line {i}" for i in range(1, 41)]
    # Nothing submitted twice: one job directory, one catalog entry.
    jobs_root = Path(r.job_dir).parent
    assert [p.name for p in jobs_root.iterdir()] == [r.job_id]
    assert len(await engine.list_jobs()) == 1


async def test_batched_status_is_one_round_trip(host: HostConfig, tmp_path: Path) -> None:
    made: list[CountingSSH] = []

    def factory(h: HostConfig) -> CountingSSH:
        made.append(CountingSSH(h))
        return made[-1]

    eng = JobEngine(Config(hosts={host.name: host}), tmp_path / "state", transport_factory=factory, environ={})
    try:
        ids = [(await eng.submit(_lines_job(200, 0.05))).job_id for _ in range(6)]
        (t,) = made
        t.runs.clear()
        views = await eng.list_jobs()
        assert {v.job_id for v in views} == set(ids)
        assert all(v.state is JobState.RUNNING for v in views)
        assert len(t.runs) == 1, t.runs  # the states of all six jobs, in one command
        assert t.runs[0][:2] == ("bash", "-c")
        for i in ids:
            await eng.cancel(i, grace_s=1)
    finally:
        await eng.aclose()
        await close_all()


async def test_many_calls_share_one_connection(engine: JobEngine, host: HostConfig) -> None:
    r = await engine.submit(JobSpec(kind="command", argv=["true"]))
    await engine.wait(r.job_id, timeout_s=10)
    for _ in range(10):
        await engine.status(r.job_id)
        await engine.read_log(r.job_id)
    await asyncio.gather(*(SSHTransport(host).run(["true"]) for _ in range(20)))
    assert connection_count(host) == 1


async def test_channels_are_limited_per_host(host: HostConfig) -> None:
    h = host.model_copy(update={"max_channels": 2})
    t = SSHTransport(h)
    await t.connect()
    t0 = time.perf_counter()
    results = await asyncio.gather(*(t.run(["sleep", "0.2"]) for _ in range(6)))
    elapsed = time.perf_counter() - t0
    assert all(r.rc == 0 for r in results)
    assert elapsed >= 0.55, f"6 x 0.2 s on 2 channels took {elapsed:.2f} s: the limit did not hold"
    await close_all()


# --------------------------------------------------------------------------- refusals


async def test_wrong_host_key_is_refused(host: HostConfig, sshd: SSHD, tmp_path: Path) -> None:
    kh = sshd.write_known_hosts(tmp_path / "known_hosts_wrong", wrong=True)
    with pytest.raises(HostKeyError) as ei:
        await SSHTransport(host.model_copy(update={"known_hosts": str(kh)})).run(["true"])
    msg = str(ei.value)
    assert "does not match" in msg and "ssh-keygen -R" in msg
    assert f"ssh-keyscan -p {sshd.port} 127.0.0.1" in msg
    await close_all()


async def test_unknown_host_key_is_refused(host: HostConfig, sshd: SSHD, tmp_path: Path) -> None:
    kh = tmp_path / "known_hosts_other"
    kh.write_text("[127.0.0.1]:1 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl\n")
    with pytest.raises(HostKeyError) as ei:
        await SSHTransport(host.model_copy(update={"known_hosts": str(kh)})).run(["true"])
    assert "is not in" in str(ei.value) and f"ssh-keyscan -p {sshd.port} 127.0.0.1 >> {kh}" in str(ei.value)
    await close_all()


async def test_default_known_hosts_is_used_and_never_skipped(
    host: HostConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "emptyhome"))
    with pytest.raises(HostKeyError) as ei:
        await SSHTransport(host.model_copy(update={"known_hosts": None})).run(["true"])
    assert str(tmp_path / "emptyhome" / ".ssh" / "known_hosts") in str(ei.value)
    assert "ssh-keyscan" in str(ei.value)
    await close_all()


async def test_bad_client_key_is_refused_clearly(host: HostConfig, sshd: SSHD) -> None:
    t0 = time.perf_counter()
    with pytest.raises(AuthError) as ei:
        await SSHTransport(host.model_copy(update={"identity_file": str(sshd.other_key)})).run(["true"])
    assert time.perf_counter() - t0 < 5
    msg = str(ei.value)
    assert str(sshd.other_key) in msg and "authorized_keys" in msg
    await close_all()


async def test_missing_identity_file_is_a_config_error(host: HostConfig, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as ei:
        await SSHTransport(host.model_copy(update={"identity_file": str(tmp_path / "no_such_key")})).run(["true"])
    assert "no_such_key" in str(ei.value)
    await close_all()


async def test_closed_port_fails_fast(host: HostConfig) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, never listening: connections are refused
        t0 = time.perf_counter()
        with pytest.raises(HostUnreachable) as ei:
            await SSHTransport(host.model_copy(update={"port": port})).run(["true"])
    assert time.perf_counter() - t0 < 1.0
    assert "refused the connection" in str(ei.value) and "Fix:" in str(ei.value)
    await close_all()


async def test_silent_host_times_out_quickly(host: HostConfig) -> None:
    """A loopback listener that accepts and never speaks: like a firewall that black-holes the session."""
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    try:
        h = host.model_copy(update={"port": silent.getsockname()[1], "connect_timeout_s": 1.0})
        t0 = time.perf_counter()
        with pytest.raises(HostUnreachable) as ei:
            await SSHTransport(h).run(["true"])
        elapsed = time.perf_counter() - t0
        assert 0.9 <= elapsed < 3.0
        assert "did not answer within 1 s" in str(ei.value)
    finally:
        silent.close()
        await close_all()


async def test_status_of_a_job_on_an_unreachable_host_is_stale_not_lost(
    engine: JobEngine, host: HostConfig, sshd: SSHD
) -> None:
    r = await engine.submit(_lines_job(100, 0.05))
    await engine.wait(r.job_id, until="running", timeout_s=10)
    sshd.stop()
    try:
        view = await engine.status(r.job_id)
        assert view.state is JobState.RUNNING and view.stale  # unknown, never guessed
    finally:
        sshd.start()
    view = await engine.status(r.job_id)
    assert view.state is JobState.RUNNING and not view.stale
    await engine.cancel(r.job_id, grace_s=1)


# --------------------------------------------------------------------------- forwarding, jump hosts


async def _echo_server() -> tuple[asyncio.Server, int]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(1024):
            writer.write(b"echo:" + data)
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


async def _roundtrip(port: int, payload: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(payload)
    await writer.drain()
    data = await asyncio.wait_for(reader.read(1024), 5)
    writer.close()
    return data


async def test_port_forward_survives_a_reconnect(host: HostConfig, sshd: SSHD) -> None:
    server, port = await _echo_server()
    t = SSHTransport(host)
    fwd = await t.forward_local_port("127.0.0.1", port)
    try:
        assert fwd.local_port != port
        assert await _roundtrip(fwd.local_port, b"hello") == b"echo:hello"
        sshd.kill_connections()
        assert await _roundtrip(fwd.local_port, b"again") == b"echo:again"
        assert connection_count(host) == 2
    finally:
        await fwd.aclose()
        server.close()
        await close_all()


async def test_proxy_jump_through_a_login_node(host: HostConfig, sshd: SSHD) -> None:
    """The same sshd plays login node and target: the target is reached *through* the login node."""
    login = host.model_copy(update={"name": "login"})
    target = host.model_copy(update={"name": "node", "proxy_jump": "login"})
    register_hosts(Config(hosts={"login": login, "node": target}))
    server, port = await _echo_server()
    try:
        t = SSHTransport(target)
        res = await t.run(["sh", "-c", "echo $SSH_CONNECTION"])
        assert res.rc == 0
        assert connection_count(login) == 1 and connection_count(target) == 1
        fwd = await t.forward_local_port("127.0.0.1", port)
        assert await _roundtrip(fwd.local_port, b"hop") == b"echo:hop"
        await fwd.aclose()
        # user@host:port form, with the target's own keys and known_hosts
        t2 = SSHTransport(host.model_copy(update={"name": "node2", "proxy_jump": f"{sshd.user}@127.0.0.1:{sshd.port}"}))
        assert (await t2.run(["true"])).rc == 0
    finally:
        server.close()
        await close_all()


async def test_proxy_jump_host_key_is_verified_too(host: HostConfig, sshd: SSHD, tmp_path: Path) -> None:
    wrong = sshd.write_known_hosts(tmp_path / "kh_wrong", wrong=True)
    login = host.model_copy(update={"name": "login-bad", "known_hosts": str(wrong)})
    target = host.model_copy(update={"name": "node-bad", "proxy_jump": "login-bad"})
    register_hosts(Config(hosts={"login-bad": login, "node-bad": target}))
    with pytest.raises(HostKeyError) as ei:
        await SSHTransport(target).run(["true"])
    assert "login-bad" in str(ei.value)
    await close_all()


async def test_open_forwards_do_not_take_command_slots(host: HostConfig) -> None:
    server, port = await _echo_server()
    t = SSHTransport(host.model_copy(update={"max_channels": 1}))
    fwd = await t.forward_local_port("127.0.0.1", port)
    held = [await asyncio.open_connection("127.0.0.1", fwd.local_port) for _ in range(3)]
    try:
        for reader, writer in held:
            writer.write(b"x")
            await writer.drain()
            assert await asyncio.wait_for(reader.read(16), 5) == b"echo:x"
        res = await asyncio.wait_for(t.run(["true"]), 5)  # three open tunnels, one command slot: still free
        assert res.rc == 0
    finally:
        for _, writer in held:
            writer.close()
        await fwd.aclose()
        server.close()
        await close_all()
