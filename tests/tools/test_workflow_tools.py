"""quantize_model, download_model, list_cached_models, setup_host and submit_script: real jobs on a local host.

Everything runs through the real engine (direct launcher, real subprocesses): a real bnb-nf4
quantization of the tiny model, a real huggingface_hub against a closed loopback port (the
network "unreachable"), a real HF cache laid out on disk, a real git repository, a real uv
environment built from a wheel made in the test. The pure checks (validation, specs) are
plain function calls.
"""

from __future__ import annotations

import base64
import hashlib
import json
import socket
import subprocess
import sys
import time
import zipfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from runners.config import Config, HostConfig
from runners.engine import JobEngine
from runners.errors import InvalidInput
from runners.host_overrides import apply_overrides, load_overrides, record_python
from runners.states import JobState
from tools.download import DownloadInput, build_download_spec, list_cached_models, parse_scan
from tools.quantize import QuantizeInput, build_quantize_spec, check_quantize
from tools.scripts import SubmitScriptInput, build_script_spec, validate_ref, validate_repo
from tools.setup_host import SetupHostInput, build_setup_spec, env_dir_for, env_is_ready, requirements_for


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def closed_port() -> int:
    """A loopback port nobody listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def hf_home(tmp_path: Path) -> Path:
    return tmp_path / "hf"


@pytest.fixture
def host(tmp_path: Path, hf_home: Path) -> HostConfig:
    return HostConfig(
        name="local",
        workdir=str(tmp_path / "work"),
        allow_scripts=True,
        env={
            "HF_HOME": str(hf_home),
            "HF_ENDPOINT": f"http://127.0.0.1:{closed_port()}",
            "CUDA_VISIBLE_DEVICES": "",
            "TOKENIZERS_PARALLELISM": "false",
            "SSL_CERT_FILE": "/etc/ssl/certs/ca-certificates.crt",
        },
    )


@pytest.fixture
async def engine(host: HostConfig, tmp_path: Path) -> AsyncIterator[JobEngine]:
    eng = JobEngine(Config(hosts={"local": host}, default_host="local"), tmp_path / "state", environ={})
    try:
        yield eng
    finally:
        await eng.aclose()


async def finish(engine: JobEngine, job_id: str, timeout: float = 240) -> Any:
    view, reached = await engine.wait(job_id, "finished", timeout)
    assert reached, view
    return view


async def log_of(engine: JobEngine, job_id: str) -> str:
    return (await engine.read_log(job_id, offset=0, max_bytes=1 << 20)).text


# -- quantize ---------------------------------------------------------------------------------
def test_quantize_refuses_calibrated_methods_without_data() -> None:
    host = HostConfig(name="g", gpus="H100:1")
    for method in ("gptq", "awq", "fp8"):
        with pytest.raises(InvalidInput, match="calibration_dataset"):
            check_quantize(QuantizeInput(model="org/m", method=method), host, None)  # type: ignore[arg-type]


def test_quantize_refuses_awq_on_a_host_without_gpu() -> None:
    p = QuantizeInput(model="org/m", method="awq", calibration_dataset="/data/c.jsonl")
    with pytest.raises(InvalidInput, match="needs a CUDA GPU") as e:
        check_quantize(p, HostConfig(name="cpu"), detected_gpus=0)
    assert "gptq / fp8-dynamic / bnb-nf4" in str(e.value)
    gpus, _ = check_quantize(p, HostConfig(name="g", gpus="A100-80GB:4"), None)
    assert gpus == 1  # quantization uses one device
    gpus, notes = check_quantize(p, HostConfig(name="s", launcher="slurm"), None)
    assert gpus == 1 and "asking SLURM for 1 GPU" in notes[0]
    # CPU methods are fine on a CPU host
    assert check_quantize(QuantizeInput(model="org/m", method="bnb-nf4"), HostConfig(name="c"), 0)[0] == 0


@pytest.mark.parametrize("bad", ["-rf", "../x", "org/m; rm -rf /", "a\nb", "ext::sh"])
def test_quantize_rejects_bad_model_refs(bad: str) -> None:
    with pytest.raises(ValueError):
        QuantizeInput(model=bad, method="bnb-nf4")


def test_quantize_spec_runs_the_payload() -> None:
    p = QuantizeInput(model="/models/m", method="gptq", calibration_dataset="org/ds", num_calibration_samples=64)
    spec = build_quantize_spec(p, 1, 3600)
    assert spec.payload == "quantize" and spec.kind == "quantize"
    assert spec.payload_config == {
        "model": "/models/m",
        "method": "gptq",
        "output_name": "quantized",
        "calibration_dataset": "org/ds",
        "num_calibration_samples": 64,
    }
    assert spec.resources.gpus == 1 and spec.resources.time_limit_s == 3600


@pytest.mark.slow
@pytest.mark.anyio
async def test_bnb_nf4_job_quantizes_reloads_and_reports_perplexity(host: HostConfig, tmp_path: Path) -> None:
    """The engine's job on a host whose bitsandbytes believes the CPU has AVX512-BF16 (forced through
    the host's env, tests/helpers/bnb_probe.py): the path that repacks 4-bit weights at the first
    forward, which failed for the old 32-wide tiny model with ``shape '[32, 0]' is invalid``."""
    from tests.helpers.bnb_probe import check_forced_path, probe_env, read_report
    from tests.helpers.tiny_model import build_tiny_model

    model = build_tiny_model(tmp_path / "tiny")
    report = tmp_path / "bnb-probe.json"
    forced = host.model_copy(update={"env": {**host.env, **probe_env(True, report)}})
    engine = JobEngine(Config(hosts={"local": forced}, default_host="local"), tmp_path / "state", environ={})
    try:
        p = QuantizeInput(model=str(model), method="bnb-nf4", output_name="nf4")
        gpus, _ = check_quantize(p, engine.config.host("local"), 0)
        res = await engine.submit(build_quantize_spec(p, gpus, None), "local")
        view = await finish(engine, res.job_id)
        assert view.state is JobState.SUCCEEDED, await log_of(engine, res.job_id)
    finally:
        await engine.aclose()
    check_forced_path(read_report(report), True, layers_4bit=14)
    manifest = json.loads(Path(res.job_dir, "outputs", "manifest.json").read_text())
    assert manifest["output_dir"] == f"{res.job_dir}/outputs/nf4"
    assert manifest["size_after_bytes"] < manifest["size_before_bytes"]
    assert manifest["forward_check"]["ok"]
    assert manifest["perplexity_before"] > 1 and manifest["perplexity_after"] > 1
    assert view.metrics and view.metrics["event"] == "end"


# -- download / cache -------------------------------------------------------------------------
def make_cached_model(hf_home: Path, repo_id: str, files: dict[str, bytes]) -> str:
    """Lay a model out in the HF hub cache exactly as huggingface_hub does (blobs, snapshot symlinks, refs)."""
    repo = hf_home / "hub" / ("models--" + repo_id.replace("/", "--"))
    commit = hashlib.sha1(repo_id.encode()).hexdigest()
    snap = repo / "snapshots" / commit
    (repo / "blobs").mkdir(parents=True)
    snap.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    for name, data in files.items():
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        (snap / name).symlink_to(Path("..", "..", "blobs", blob.name))
    return commit


def test_download_spec_on_slurm_runs_on_the_login_node_with_the_token_as_secret() -> None:
    slurm = HostConfig(name="c", launcher="slurm", env={"HF_HUB_OFFLINE": "1"})
    spec = build_download_spec(DownloadInput(model="org/m", revision="v1.0"), slurm, {"HF_TOKEN": "hf_x"})
    assert spec.launcher == "direct" and spec.kind == "download" and spec.payload == "download"
    assert spec.secrets == ["HF_TOKEN"] and "hf_x" not in spec.model_dump_json()
    assert spec.env["HF_HUB_OFFLINE"] == "0"  # this one job goes online
    plain = build_download_spec(DownloadInput(model="org/m"), HostConfig(name="l"), {})
    assert plain.launcher is None and plain.secrets == []


@pytest.mark.parametrize("bad", ["-x", "org/../m", "a b", "org/m/extra", "ext::sh"])
def test_download_rejects_bad_repo_ids(bad: str) -> None:
    with pytest.raises(ValueError):
        DownloadInput(model=bad)


@pytest.mark.anyio
async def test_download_on_a_slurm_host_is_a_direct_job_not_sbatch(tmp_path: Path) -> None:
    host = HostConfig(name="cluster", launcher="slurm", workdir=str(tmp_path / "w"))
    eng = JobEngine(Config(hosts={"cluster": host}), tmp_path / "state", environ={"HF_TOKEN": "hf_secret_1"})
    try:
        spec = build_download_spec(DownloadInput(model="org/m"), host, {"HF_TOKEN": "hf_secret_1"})
        res = await eng.submit(spec, "cluster", dry_run=True)
    finally:
        await eng.aclose()
    assert res.run_script is not None and "#SBATCH" not in res.run_script and "sbatch" not in res.run_script
    assert "HF_TOKEN" in res.env_names and "hf_secret_1" not in (res.run_script + (res.job_json or ""))


@pytest.mark.anyio
async def test_download_fails_fast_when_the_hub_is_unreachable(engine: JobEngine) -> None:
    spec = build_download_spec(DownloadInput(model="org/not-cached"), engine.config.host("local"), {})
    t0 = time.monotonic()
    res = await engine.submit(spec, "local")
    view = await finish(engine, res.job_id, 60)
    assert time.monotonic() - t0 < 30
    assert view.state is JobState.FAILED and view.exit_code == 5
    text = await log_of(engine, res.job_id)
    assert "HubUnreachable" in text and "cannot be reached" in text and "login node" in text
    status = await engine.status(res.job_id)
    assert status.error is not None and "HubUnreachable" in (status.error.line or "")


@pytest.mark.anyio
async def test_a_cached_model_is_listed_and_its_download_is_served_from_the_cache(
    engine: JobEngine, hf_home: Path
) -> None:
    host = engine.config.host("local")
    empty = await list_cached_models(engine.transport("local"), host)
    assert empty.models == [] and "empty" in empty.summary
    commit = make_cached_model(hf_home, "org/tiny", {"config.json": b"{}", "model.safetensors": b"x" * 4096})
    listing = await list_cached_models(engine.transport("local"), host)
    assert [m.repo_id for m in listing.models] == ["org/tiny"]
    m = listing.models[0]
    assert m.size_bytes == 4096 + 2 and m.files == 2 and m.repo_type == "model"
    assert m.revisions[0].commit == commit and m.revisions[0].refs == ["main"]
    assert listing.cache_dir == str(hf_home / "hub") and "org/tiny" in listing.summary
    # The network is still unreachable: the download is satisfied from the cache.
    res = await engine.submit(build_download_spec(DownloadInput(model="org/tiny"), host, {}), "local")
    view = await finish(engine, res.job_id, 60)
    assert view.state is JobState.SUCCEEDED, await log_of(engine, res.job_id)
    manifest = json.loads(Path(res.job_dir, "outputs", "manifest.json").read_text())
    assert manifest["commit"] == commit and manifest["files"] == 2 and manifest["size_bytes"] == 4098


def test_parse_scan_reports_missing_hub_as_an_error() -> None:
    with pytest.raises(Exception, match="huggingface_hub is not installed"):
        parse_scan("h", json.dumps({"error": "huggingface_hub is not installed: x"}))


# -- submit_script ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "repo",
    [
        "https://github.com/org/repo.git",
        "ssh://git@host/x.git",
        "git@github.com:org/r.git",
        "/srv/repo",
        "~/code/repo",
        "file:///srv/repo",
    ],
)
def test_accepted_repo_urls(repo: str) -> None:
    assert validate_repo(repo) == repo


@pytest.mark.parametrize(
    "repo",
    [
        "--upload-pack=touch /tmp/x",
        "-u",
        "ext::sh -c touch% /tmp/pwned",
        "fd::3",
        "relative/path",
        "http://insecure/x",
        "https://a b",
        "",
    ],
)
def test_refused_repo_urls(repo: str) -> None:
    with pytest.raises(ValueError):
        validate_repo(repo)


@pytest.mark.parametrize("ref", ["-b", "a..b", "x.lock", "@{-1}", "a//b", ".hidden", "a b", "--orphan"])
def test_refused_refs(ref: str) -> None:
    with pytest.raises(ValueError):
        validate_ref(ref)


def test_scripts_are_off_unless_the_host_allows_them() -> None:
    p = SubmitScriptInput(repo="/srv/r", script="train.py")
    with pytest.raises(InvalidInput, match="allow_scripts = true"):
        build_script_spec(p, HostConfig(name="h"))
    with pytest.raises(ValueError):
        SubmitScriptInput(repo="/srv/r", script="../evil.py")
    with pytest.raises(ValueError):
        SubmitScriptInput(repo="/srv/r", script="-m")


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture
def repo(tmp_path: Path) -> tuple[Path, str, str]:
    """A git repo: main has v1 of run.py (tagged), a branch 'exp' has v2."""
    r = tmp_path / "repo"
    r.mkdir()
    git(r, "init", "-q", "-b", "main")
    git(r, "config", "user.email", "t@example.com")
    git(r, "config", "user.name", "t")
    code = "import json, sys; print('VERSION {v}', json.dumps(sys.argv[1:]))\n"
    (r / "run.py").write_text(code.format(v=1))
    git(r, "add", ".")
    git(r, "commit", "-qm", "v1")
    git(r, "tag", "v1.0")
    first = git(r, "rev-parse", "HEAD")
    git(r, "checkout", "-qb", "exp")
    (r / "run.py").write_text(code.format(v=2))
    git(r, "commit", "-qam", "v2")
    second = git(r, "rev-parse", "HEAD")
    git(r, "checkout", "-q", "main")
    return r, first, second


@pytest.mark.anyio
async def test_submit_script_clones_checks_out_and_passes_argv_verbatim(
    engine: JobEngine, repo: tuple[Path, str, str], tmp_path: Path
) -> None:
    path, first, second = repo
    args = ["--lr", "1e-4", "two words", "; touch PWNED", "$(id)"]
    host = engine.config.host("local")
    for ref, want_version, want_commit in [
        (None, 1, first),
        ("exp", 2, second),
        ("v1.0", 1, first),
        (second, 2, second),
    ]:
        p = SubmitScriptInput(repo=str(path), ref=ref, script="run.py", args=args, env={"MY_VAR": "1"})
        res = await engine.submit(build_script_spec(p, host), "local")
        view = await finish(engine, res.job_id, 60)
        text = await log_of(engine, res.job_id)
        assert view.state is JobState.SUCCEEDED, text
        assert f"VERSION {want_version} {json.dumps(args)}" in text
        source = json.loads(Path(res.job_dir, "outputs", "source.json").read_text())
        assert source["commit"] == want_commit
        assert not list(Path(res.job_dir).rglob("PWNED"))


@pytest.mark.anyio
async def test_submit_script_with_an_unknown_ref_or_script_fails_clearly(
    engine: JobEngine, repo: tuple[Path, str, str]
) -> None:
    path, _, _ = repo
    host = engine.config.host("local")
    res = await engine.submit(
        build_script_spec(SubmitScriptInput(repo=str(path), ref="nope", script="run.py"), host), "local"
    )
    view = await finish(engine, res.job_id, 60)
    assert view.state is JobState.FAILED and view.exit_code == 3
    assert "RefNotFound" in await log_of(engine, res.job_id)
    res = await engine.submit(build_script_spec(SubmitScriptInput(repo=str(path), script="missing.py"), host), "local")
    view = await finish(engine, res.job_id, 60)
    assert view.state is JobState.FAILED and view.exit_code == 4


# -- setup_host --------------------------------------------------------------------------------
def make_wheel(out_dir: Path, name: str = "llmops_probe", version: str = "0.1.0") -> Path:
    """A minimal, valid pure-Python wheel (no network needed to install it)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    whl = out_dir / f"{name}-{version}-py3-none-any.whl"
    dist = f"{name}-{version}.dist-info"
    files = {
        f"{name}/__init__.py": f"VERSION = {version!r}\n".encode(),
        f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode(),
        f"{dist}/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = []
    with zipfile.ZipFile(whl, "w") as z:
        for arc, data in files.items():
            z.writestr(arc, data)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            record.append(f"{arc},sha256={digest},{len(data)}")
        record.append(f"{dist}/RECORD,,")
        z.writestr(f"{dist}/RECORD", "\n".join(record) + "\n")
    return whl


def test_setup_requirements_and_validation() -> None:
    reqs = requirements_for(SetupHostInput())
    assert "vllm==0.26.0" in reqs and "unsloth==2026.10.9" in reqs and "torch==2.11.0" in reqs
    assert "transformers==5.17.0" in reqs and "trl==1.15.0" in reqs and reqs == sorted(set(reqs))
    assert SetupHostInput(components=["llmcompressor"]).name == "llmcompressor"
    with pytest.raises(ValueError, match="its own"):
        SetupHostInput(components=["vllm", "llmcompressor"])
    for bad in (["six; rm -rf /"], ["--index-url=http://evil"], ["-e ."], ["../x.whl"]):
        with pytest.raises(ValueError):
            SetupHostInput(components=[], extra_packages=bad)
    spec = build_setup_spec(SetupHostInput(), "/w/envs/llm-ops", slurm=True)
    assert spec.launcher == "direct" and spec.payload == "setup_host"


def test_host_overrides_lay_the_recorded_python_over_the_config(tmp_path: Path) -> None:
    cfg = Config(hosts={"a": HostConfig(name="a", python="/usr/bin/python3"), "b": HostConfig(name="b")})
    assert apply_overrides(cfg, load_overrides(tmp_path)) is cfg
    record_python(tmp_path, "a", "/w/envs/llm-ops/bin/python")
    record_python(tmp_path, "gone", "/x/bin/python")
    new = apply_overrides(cfg, load_overrides(tmp_path))
    assert new.host("a").interpreter == "/w/envs/llm-ops/bin/python"
    assert new.host("b").interpreter == cfg.host("b").interpreter and "gone" not in new.hosts


@pytest.mark.slow
@pytest.mark.anyio
async def test_setup_host_builds_a_uv_env_once_then_leaves_it_alone(engine: JobEngine, tmp_path: Path) -> None:
    wheel = make_wheel(tmp_path / "wheels")
    py = f"{sys.version_info.major}.{sys.version_info.minor}"
    p = SetupHostInput(components=[], extra_packages=[str(wheel)], python=py, env_name="probe")
    env_dir = env_dir_for(await engine.workdir("local"), p.name)
    transport = engine.transport("local")
    assert not await env_is_ready(transport, env_dir, requirements_for(p), py)
    res = await engine.submit(build_setup_spec(p, env_dir, slurm=False), "local")
    view = await finish(engine, res.job_id, 400)
    assert view.state is JobState.SUCCEEDED, await log_of(engine, res.job_id)
    manifest = json.loads(Path(res.job_dir, "outputs", "manifest.json").read_text())
    assert manifest["installed_now"] is True and manifest["python"] == f"{env_dir}/bin/python"
    assert manifest["packages"]["llmops_probe"] == "0.1.0" and manifest["python_version"].startswith(py)
    assert "nvidia_smi" in manifest
    out = subprocess.run(
        [manifest["python"], "-c", "import llmops_probe; print(llmops_probe.VERSION)"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == "0.1.0"
    assert await env_is_ready(transport, env_dir, requirements_for(p), py)
    # Idempotent: the same request again installs nothing.
    again = await engine.submit(build_setup_spec(p, env_dir, slurm=False), "local")
    view = await finish(engine, again.job_id, 120)
    assert view.state is JobState.SUCCEEDED
    manifest2 = json.loads(Path(again.job_dir, "outputs", "manifest.json").read_text())
    assert manifest2["installed_now"] is False
    assert "already satisfies" in await log_of(engine, again.job_id)
