"""Host probe: the Hugging Face hub cache as huggingface_hub's ``scan_cache_dir`` sees it.

Runs with the host's HF variables (its caller passes them through ``env``). Prints one JSON
object: cache_dir, repos (each with its revisions), warnings; exits 4 (runners/payloads/job_io.py
EXIT_MISSING_DEPENDENCY) when huggingface_hub is not installed. Read by tools/download.py ``list_cached_models``.
"""

import json
import sys

try:
    from huggingface_hub import constants, scan_cache_dir
except ImportError as exc:
    print(json.dumps({"error": f"huggingface_hub is not installed: {exc}"}))
    sys.exit(4)  # job_io.EXIT_MISSING_DEPENDENCY (a probe runs as python -c: it cannot import it)
try:
    info = scan_cache_dir()
except Exception as exc:
    if type(exc).__name__ == "CacheNotFound":
        print(json.dumps({"cache_dir": str(constants.HF_HUB_CACHE), "repos": [], "warnings": []}))
        sys.exit(0)
    raise
repos = []
for r in sorted(info.repos, key=lambda r: (r.repo_type, r.repo_id)):
    revs = [
        {
            "commit": v.commit_hash,
            "refs": sorted(v.refs),
            "size_bytes": v.size_on_disk,
            "files": v.nb_files,
            "snapshot_path": str(v.snapshot_path),
        }
        for v in sorted(r.revisions, key=lambda v: v.commit_hash)
    ]
    repos.append(
        {
            "repo_id": r.repo_id,
            "repo_type": r.repo_type,
            "size_bytes": r.size_on_disk,
            "files": r.nb_files,
            "last_modified": r.last_modified,
            "revisions": revs,
        }
    )
print(
    json.dumps(
        {"cache_dir": str(constants.HF_HUB_CACHE), "repos": repos, "warnings": [str(w) for w in info.warnings][:20]}
    )
)
