"""bench/serve_memory_gpu.py on the CPU: its log parsing, and its start/read/stop loop with a fake `vllm`.

The GPU run has one shot of a few minutes, so what can go wrong without a GPU is tried here:
the regexes against vLLM 0.26.0's own format strings (copied with their logging prefix), and
the measure loop against a stand-in `vllm` program (named as such) that prints those lines,
keeps a child process like vLLM's EngineCore and only ends on a signal.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))

import serve_memory_gpu as smg  # noqa: E402

# Lines as vLLM 0.26.0 logs them (gpu_model_runner.py, gpu_worker.py, kv_cache_utils.py, uvicorn).
LOG = textwrap.dedent(
    """\
    (APIServer pid=101) INFO 12-01 21:40:02 [scheduler.py:253] Chunked prefill is enabled with max_num_batched_tokens=8192.
    (EngineCore pid=202) INFO 12-01 21:40:31 [gpu_model_runner.py:5348] Model loading took 14.99 GiB memory and 6.512345 seconds
    (EngineCore pid=202) INFO 12-01 21:41:10 [gpu_model_runner.py:6612] Profiling CUDA graph memory: PIECEWISE=51 (largest=512), FULL=35 (largest=256)
    (EngineCore pid=202) INFO 12-01 21:41:14 [gpu_model_runner.py:6738] Estimated CUDA graph memory: 0.62 GiB total
    (EngineCore pid=202) INFO 12-01 21:41:15 [gpu_worker.py:560] Available KV cache memory: 107.45 GiB
    (EngineCore pid=202) INFO 12-01 21:41:15 [kv_cache_utils.py:2177] GPU KV cache size: 1,964,880 tokens
    (EngineCore pid=202) INFO 12-01 21:41:15 [kv_cache_utils.py:2179] Maximum concurrency for 32,768 tokens per request: 59.96x
    (EngineCore pid=202) INFO 12-01 21:41:40 [gpu_model_runner.py:6845] Graph capturing finished in 12 secs, took 0.58 GiB
    (EngineCore pid=202) INFO 12-01 21:41:40 [gpu_worker.py:794] CUDA graph pool memory: 0.58 GiB (actual), 0.62 GiB (estimated), difference: 0.04 GiB (6.9%).
    (EngineCore pid=202) INFO 12-01 21:41:40 [gpu_worker.py:852] Free memory on device (139.78/140.4 GiB) on startup. Desired GPU memory utilization is (0.9, 126.36 GiB). Actual usage is 14.99 GiB for weight, 3.21 GiB for peak activation, 0.09 GiB for non-torch memory, and 0.58 GiB for CUDAGraph memory. Replace gpu_memory_utilization config with `--kv-cache-memory=115` (107.49 GiB) to fit into requested memory, or `--kv-cache-memory=121` (120.55 GiB) to fully utilize gpu memory. Current kv cache memory in use is 107.45 GiB.
    (APIServer pid=101) INFO:     Application startup complete.
    """
)


def test_parse_log_reads_every_figure():
    got = smg.parse_log(LOG)
    assert got["weights_load_gib"] == 14.99
    assert got["available_kv_gib"] == 107.45
    assert got["kv_tokens"] == 1_964_880
    assert (got["max_model_len"], got["max_concurrency"]) == (32768, 59.96)
    assert got["cudagraph_estimate_gib"] == 0.62
    assert (got["cudagraph_pool_actual_gib"], got["cudagraph_pool_estimated_gib"]) == (0.58, 0.62)
    assert (got["graph_capture_s"], got["graph_capture_gib"]) == (12.0, 0.58)
    assert got["total_gib"] == 140.4 and got["requested_gib"] == 126.36 and got["gpu_memory_utilization"] == 0.9
    assert (got["weights_gib"], got["activation_peak_gib"], got["non_torch_gib"]) == (14.99, 3.21, 0.09)
    assert got["cudagraph_actual_gib"] == 0.58
    assert got["max_num_batched_tokens"] == 8192
    assert got["ready"] is True


def test_parse_log_of_a_server_that_died_early_has_what_it_printed():
    head = "\n".join(LOG.splitlines()[:2])
    got = smg.parse_log(head)
    assert got == {"max_num_batched_tokens": 8192, "weights_load_gib": 14.99}


FAKE_VLLM = """\
#!{python}
# A stand-in for `vllm serve` (not vLLM): prints vLLM 0.26.0's memory lines, keeps a child
# process like vLLM's EngineCore, and runs until it is signalled.
import os, subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
open(os.environ["FAKE_VLLM_PIDS"], "a").write(f"{{os.getpid()}} {{child.pid}}\\n")
log = open(os.environ["FAKE_VLLM_LOG"]).read()
if "+slow" not in " ".join(sys.argv):
    time.sleep(0.5)
    sys.stdout.write(log)
    sys.stdout.flush()
time.sleep(600)
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is gone for our purposes
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def test_measure_starts_reads_and_stops_each_server(tmp_path: Path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "vllm"
    fake.write_text(FAKE_VLLM.format(python=sys.executable))
    fake.chmod(0o755)
    (tmp_path / "log.txt").write_text(LOG)
    pids = tmp_path / "pids.txt"
    out = tmp_path / "out"
    env = {
        **os.environ,
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "PYTHONPATH": str(ROOT),
        "HF_HUB_OFFLINE": "1",
        "FAKE_VLLM_LOG": str(tmp_path / "log.txt"),
        "FAKE_VLLM_PIDS": str(pids),
    }
    t0 = time.monotonic()
    r = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "serve_memory_gpu.py"), "measure", "--work", str(tmp_path / "w"),
         "--out", str(out), "--items", "tiny,tiny+lora", "--budget-s", "200", "--item-timeout-s", "60"],
        capture_output=True, text=True, env=env, timeout=300, check=False,
    )  # fmt: skip
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    rows = [json.loads(x) for x in (out / "serve_memory_gpu.jsonl").read_text().splitlines()]
    assert [x["item"] for x in rows] == ["tiny", "tiny+lora"]
    assert all(x["status"] == "ready" and x["available_kv_gib"] == 107.45 for x in rows)
    assert rows[0]["argv"][-1] != "--enable-lora" and rows[1]["argv"][-1] == "--enable-lora"
    assert rows[0]["startup_s"] is not None and rows[0]["startup_s"] < 30
    assert (out / "logs" / "tiny.log").read_text().count("Available KV cache memory") == 1
    assert time.monotonic() - t0 < 120
    for line in pids.read_text().splitlines():  # the server and its child are gone
        assert not any(_alive(int(p)) for p in line.split()), line


def test_measure_gives_up_on_a_server_that_never_gets_ready(tmp_path: Path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "vllm").write_text(FAKE_VLLM.format(python=sys.executable))
    (bin_dir / "vllm").chmod(0o755)
    (tmp_path / "log.txt").write_text(LOG)
    pids = tmp_path / "pids.txt"
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "PYTHONPATH": str(ROOT),
           "FAKE_VLLM_LOG": str(tmp_path / "log.txt"), "FAKE_VLLM_PIDS": str(pids)}  # fmt: skip
    # serve_once finds `vllm` on PATH: run it in a child with the stand-in's PATH.
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); import serve_memory_gpu as s, json; from pathlib import Path;"
        "print(json.dumps(s.serve_once(Path('/m+slow'), 'x', False, Path(sys.argv[2]), 3.0, 8199)))"
    )
    r = subprocess.run([sys.executable, "-c", code, str(ROOT / "bench"), str(tmp_path / "x.log")],
                       capture_output=True, text=True, env=env, timeout=120, check=False)  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    row = json.loads(r.stdout.splitlines()[-1])
    assert row["status"] == "timeout" and "available_kv_gib" not in row
    for line in pids.read_text().splitlines():
        assert not any(_alive(int(p)) for p in line.split()), line
