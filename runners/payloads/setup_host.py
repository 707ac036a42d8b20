#!/usr/bin/env python
"""setup_host payload: build (or confirm) a uv virtual environment of pinned packages on the host.

    python setup_host.py job.json     # settings in job.json["payload_config"]

Stdlib only: it runs with whatever ``python3`` the host has, before any environment of
ours exists. Why uv: it resolves and installs a torch + vLLM stack in a minute where pip
takes ten, and ``uv venv --python 3.12`` fetches that Python when the host lacks it.
Where uv is not on the host, it is bootstrapped once into ``<envs>/.uv-bootstrap`` with
pip.

Idempotent: the environment carries ``llm-ops-env.json`` (the requirements and Python it
was built for). When that matches the request, every pinned package is installed at its
pinned version and the interpreter runs, nothing is installed again.

Reports: metrics.jsonl, and outputs/manifest.json with the interpreter path, whether
anything was installed, the installed versions and ``nvidia-smi`` output.
Exit codes (job_io's table): 0 done, 2 bad settings, 4 uv unavailable, 6 install failed,
1 anything else.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

try:  # beside this file in the job directory; runners.payloads.job_io in the repository
    from . import job_io as jio
except ImportError:
    import job_io as jio  # type: ignore[no-redef]

MARKER = "llm-ops-env.json"
DEFAULTS: dict[str, Any] = {"env_dir": None, "python": "3.12", "requirements": [], "index_url": None}
_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[A-Za-z0-9,._-]+\])?==([A-Za-z0-9.+!_-]+)$")
VERSIONS_SNIPPET = (
    "import json, importlib.metadata as m, sys; "
    "print(json.dumps({'python': sys.version.split()[0], 'packages': "
    "{d.metadata['Name'].lower(): d.version for d in m.distributions() if d.metadata['Name']}}))"
)


def say(msg: str) -> None:
    print(f"[setup_host] {msg}", flush=True)


def run(argv: list[str], timeout: float = 3600) -> subprocess.CompletedProcess[str]:
    say("$ " + " ".join(argv))
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout)


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def load_settings(path: Path) -> dict[str, Any]:
    cfg = jio.load_settings(path, DEFAULTS, required=("env_dir", "requirements"))
    cfg["env_dir"] = str(Path(os.path.expanduser(cfg["env_dir"])).absolute())
    cfg["requirements"] = sorted(cfg["requirements"])
    return cfg


def env_python(env_dir: str) -> Path:
    return Path(env_dir) / "bin" / "python"


def installed(python: Path) -> dict[str, Any] | None:
    """Python version and package versions of an environment, or None if its interpreter does not run."""
    if not python.exists():
        return None
    try:
        res = subprocess.run([str(python), "-c", VERSIONS_SNIPPET], capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if res.returncode != 0:
        return None
    return json.loads(res.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def pin_of(req: str) -> tuple[str, str | None]:
    """(normalized name, pinned version or None) of a requirement or a wheel path (name-version-tags.whl)."""
    if req.endswith(".whl"):
        name, version = Path(req).name.split("-")[:2]
        return norm(name), version
    m = _PIN.match(req)
    if m:
        return norm(m.group(1)), m.group(2)
    return norm(re.split(r"[<>=!~\[; ]", req, maxsplit=1)[0]), None


def unmet(requirements: list[str], have: dict[str, str]) -> list[str]:
    """Requirements not installed at their pinned version; unpinned ones only need the name."""
    got = {norm(k): v for k, v in have.items()}
    missing = []
    for req in requirements:
        name, version = pin_of(req)
        if name not in got or (version is not None and got[name] != version):
            missing.append(req)
    return missing


def satisfied(cfg: dict[str, Any]) -> dict[str, Any] | None:
    """The environment's versions when it already matches the request, else None."""
    marker = Path(cfg["env_dir"]) / MARKER
    try:
        built = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if built.get("requirements") != cfg["requirements"] or built.get("python") != cfg["python"]:
        return None
    info = installed(env_python(cfg["env_dir"]))
    if info is None or unmet(cfg["requirements"], info["packages"]):
        return None
    return info


def find_uv(envs_root: Path) -> str:
    """uv from PATH or its usual install places; else bootstrap it with pip into <envs>/.uv-bootstrap."""
    for cand in (shutil.which("uv"), "~/.local/bin/uv", "~/.cargo/bin/uv", str(envs_root / ".uv-bootstrap/bin/uv")):
        if cand and os.access(os.path.expanduser(cand), os.X_OK):
            return os.path.expanduser(cand)
    boot = envs_root / ".uv-bootstrap"
    say(f"uv not found: bootstrapping it into {boot} with pip")
    res = run([sys.executable, "-m", "venv", str(boot)])
    if res.returncode == 0:
        res = run([str(boot / "bin" / "python"), "-m", "pip", "install", "--quiet", "uv"], timeout=900)
    uv = boot / "bin" / "uv"
    if res.returncode != 0 or not uv.exists():
        raise jio.MissingDependency(
            "uv is not installed and could not be bootstrapped with pip "
            f"({(res.stderr or res.stdout).strip()[-300:]}); install uv on the host (https://docs.astral.sh/uv/)",
            kind="no_uv",
        )
    return str(uv)


def nvidia_smi() -> str:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return "nvidia-smi not found (no NVIDIA driver on this host)"
    try:
        res = subprocess.run([exe], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"nvidia-smi failed: {exc}"
    return (res.stdout or res.stderr)[-8000:]


def install_failed(kind: str, message: str) -> jio.Failure:
    return jio.Failure(message, kind=kind, code=jio.EXIT_INSTALL_FAILED)


def build(cfg: dict[str, Any]) -> dict[str, Any]:
    env_dir = Path(cfg["env_dir"])
    info = satisfied(cfg)
    if info is not None:
        say(f"{env_dir} already satisfies {len(cfg['requirements'])} requirements: nothing to install")
        return {"installed_now": False, "info": info}
    env_dir.parent.mkdir(parents=True, exist_ok=True)
    uv = find_uv(env_dir.parent)
    venv = [uv, "venv", "--python", cfg["python"]]
    if env_dir.exists():
        venv.append("--allow-existing")
    res = run([*venv, str(env_dir)], timeout=1800)
    if res.returncode != 0:
        raise install_failed("venv", f"uv venv failed: {(res.stderr or res.stdout).strip()[-600:]}")
    install = [uv, "pip", "install", "--python", str(env_python(str(env_dir)))]
    if cfg["index_url"]:
        install += ["--index-url", cfg["index_url"]]
    res = run([*install, *cfg["requirements"]], timeout=3600)
    print(res.stdout[-4000:], res.stderr[-4000:], sep="\n", flush=True)
    if res.returncode != 0:
        raise install_failed("install", f"uv pip install failed: {(res.stderr or res.stdout).strip()[-800:]}")
    info = installed(env_python(str(env_dir)))
    if info is None:
        raise install_failed("install", f"the new interpreter {env_python(str(env_dir))} does not run")
    missing = unmet(cfg["requirements"], info["packages"])
    if missing:
        raise install_failed("install", f"after install, still not satisfied: {', '.join(missing)}")
    marker = {"requirements": cfg["requirements"], "python": cfg["python"], "built_at": time.time()}
    (env_dir / MARKER).write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")
    return {"installed_now": True, "info": info}


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python setup_host.py job.json", file=sys.stderr)
        return jio.EXIT_BAD_INPUT
    files = jio.job_files(Path(args[0]))
    metrics = jio.Metrics(files.metrics)
    try:
        cfg = load_settings(files.settings)
        metrics.write({"event": "start", "env_dir": cfg["env_dir"], "requirements": cfg["requirements"]})
        result = build(cfg)
    except Exception as exc:
        return jio.report_failure(metrics, exc, label="SetupError")
    manifest = manifest_of(cfg, result, round(time.time() - metrics.t0, 2))
    (files.outputs / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    metrics.write({"event": "end", "installed_now": result["installed_now"], "python": manifest["python"]})
    say(
        f"done: {manifest['python']} (Python {manifest['python_version']}), "
        + ", ".join(f"{k} {v}" for k, v in manifest["requested_versions"].items())
    )
    return jio.EXIT_OK


def manifest_of(cfg: dict[str, Any], result: dict[str, Any], elapsed_s: float) -> dict[str, Any]:
    """outputs/manifest.json: the interpreter, whether anything was installed, the versions, the GPUs."""
    info = result["info"]
    wanted = {pin_of(r)[0] for r in cfg["requirements"]}
    return {
        "python": str(env_python(cfg["env_dir"])),
        "python_version": info["python"],
        "env_dir": cfg["env_dir"],
        "installed_now": result["installed_now"],
        "requirements": cfg["requirements"],
        "requested_versions": {k: v for k, v in sorted(info["packages"].items()) if norm(k) in wanted},
        "packages": dict(sorted(info["packages"].items())),
        "nvidia_smi": nvidia_smi(),
        "elapsed_s": elapsed_s,
    }


if __name__ == "__main__":
    sys.exit(main())
