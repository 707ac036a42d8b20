"""bench/multigpu_gpu.py --smoke on the CPU (gloo, tiny model): the GPU run must work the first time.

Only the direct torch runner here (DDP on 1 and 2 ranks, FSDP2 on 2): the payload runner is
the fine-tune payload under torchrun, which tests/server/test_multigpu_finetune.py runs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_smoke_run_writes_rows_for_ddp_and_fsdp(tmp_path: Path):
    out = tmp_path / "out"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    r = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "multigpu_gpu.py"),
            "--work",
            str(tmp_path / "w"),
            "--out",
            str(out),
            "--smoke",
            "--runners",
            "torch",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=400,
        check=False,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    rows = [json.loads(x) for x in (out / "multigpu_gpu.jsonl").read_text().splitlines()]
    assert [(x["part"], x["world_size"]) for x in rows] == [("ddp", 1), ("ddp", 2), ("fsdp", 2)]
    assert all("error" not in x and x["tokens_per_s"] > 0 for x in rows), rows
    assert len(rows[2]["peak_reserved_gib"]) == 2  # one peak per rank
    assert "torch.distributed.run" in rows[1]["command"] and "--nproc-per-node=2" in rows[1]["command"]
    assert "DDP scaling (torch)" in r.stdout
