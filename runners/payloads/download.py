#!/usr/bin/env python
"""Download payload: fetch a Hub repository into the host's Hugging Face cache.

    python download.py job.json      # settings in job.json["payload_config"]

Why ``snapshot_download`` into the cache (not a local_dir): every later job on the host
(vLLM, the fine-tune and quantize payloads, ``HF_HUB_OFFLINE=1`` compute nodes) finds the
files by repo id in the same cache, and an interrupted download resumes from its
``.incomplete`` blobs when the job is submitted again. The Hub token, if any, comes from
``HF_TOKEN`` in the job's 0600 env file; it is never written anywhere else.

Reports only through files: metrics.jsonl ("start", then "end" or "error") and
outputs/manifest.json (repo, commit, snapshot path, files, bytes). Exit codes (job_io's
table): 0 done, 2 bad settings or a repository that does not exist / is gated, 4
huggingface_hub is not installed, 5 the Hub is unreachable, 1 anything else.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

try:  # beside this file in the job directory; runners.payloads.job_io in the repository
    from . import job_io as jio
except ImportError:
    import job_io as jio  # type: ignore[no-redef]

DEFAULTS: dict[str, Any] = {"model": None, "revision": None, "allow_patterns": None, "repo_type": "model"}


def snapshot_size(path: Path) -> tuple[int, int]:
    """(files, bytes) of a snapshot; its entries are symlinks into blobs/, so follow them."""
    files = size = 0
    for f in path.rglob("*"):
        if f.is_file():
            files += 1
            size += f.stat().st_size
    return files, size


def download(cfg: dict[str, Any]) -> dict[str, Any]:
    try:
        import huggingface_hub as hub
        from huggingface_hub import errors as hub_errors
    except ImportError as exc:
        raise jio.MissingDependency(
            f"huggingface_hub is not installed in the host's python ({exc}); install it or run setup_host"
        ) from exc
    from huggingface_hub import constants

    endpoint = os.environ.get("HF_ENDPOINT") or constants.ENDPOINT
    try:
        path = hub.snapshot_download(
            repo_id=cfg["model"],
            revision=cfg["revision"],
            repo_type=cfg["repo_type"],
            allow_patterns=cfg["allow_patterns"],
            etag_timeout=15,
        )
    except hub_errors.GatedRepoError as exc:
        raise jio.BadInput(
            f"{cfg['model']} is gated: accept its licence on the Hub and give the server an HF_TOKEN "
            f'(secrets = ["HF_TOKEN"]) ({exc.__class__.__name__})',
            kind="gated",
        ) from exc
    except hub_errors.RepositoryNotFoundError as exc:
        raise jio.BadInput(
            f"repository {cfg['model']} does not exist on {endpoint} or is private (a token is needed)",
            kind="not_found",
        ) from exc
    except hub_errors.RevisionNotFoundError as exc:
        raise jio.BadInput(f"revision {cfg['revision']!r} of {cfg['model']} does not exist", kind="not_found") from exc
    except hub_errors.LocalEntryNotFoundError as exc:
        offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
        why = (
            "HF_HUB_OFFLINE is set on this host"
            if offline
            else f"the Hub at {endpoint} cannot be reached ({exc.__cause__ or exc})"
        )
        raise jio.Failure(
            f"HubUnreachable: {why} and {cfg['model']} is not in the cache; run the download where there is "
            "internet (on SLURM hosts it runs on the login node), or set HTTPS_PROXY / HF_ENDPOINT in the host's env",
            kind="unreachable",
            code=jio.EXIT_UNREACHABLE,
        ) from exc
    snap = Path(path)
    files, size = snapshot_size(snap)
    return {
        "model": cfg["model"],
        "repo_type": cfg["repo_type"],
        "revision": cfg["revision"],
        "commit": snap.name,
        "snapshot_path": str(snap),
        "cache_dir": str(constants.HF_HUB_CACHE),
        "allow_patterns": cfg["allow_patterns"],
        "files": files,
        "size_bytes": size,
        "huggingface_hub": hub.__version__,
    }


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python download.py job.json", file=sys.stderr)
        return jio.EXIT_BAD_INPUT
    files = jio.job_files(Path(args[0]))
    metrics = jio.Metrics(files.metrics)
    try:
        cfg = jio.load_settings(files.settings, DEFAULTS, required=("model",))
        metrics.write({"event": "start", "model": cfg["model"], "revision": cfg["revision"]})
        print(f"[download] {cfg['model']} (revision {cfg['revision'] or 'main'}) into the HF cache", flush=True)
        manifest = download(cfg)
    except Exception as exc:
        return jio.report_failure(metrics, exc, label="DownloadError")
    manifest["elapsed_s"] = round(time.time() - metrics.t0, 2)
    (files.outputs / "manifest.json").write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    metrics.write({"event": "end", **{k: manifest[k] for k in ("commit", "files", "size_bytes")}})
    print(
        f"[download] done: {manifest['files']} files, {manifest['size_bytes'] / 2**20:.1f} MiB at "
        f"{manifest['snapshot_path']}",
        flush=True,
    )
    return jio.EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
