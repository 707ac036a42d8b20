#!/usr/bin/env bash
# Builds .gpu/lmeval.tgz in the current repo: EleutherAI's lm-evaluation-harness (lm_eval 0.4.13) and
# what its import path and its vllm / local-completions back-ends need beyond the GPU test machine's
# venv (torch 2.11, transformers 5.17, peft, accelerate, pyarrow, pandas, aiohttp, huggingface_hub,
# numpy, jinja2, pyyaml, regex, tqdm, requests) and the fine-tune tree (.gpu/site.tgz: datasets 4.8.5,
# dill, multiprocess, trl), for evaluate_model's jobs there. Usage, from the repo root:
#     bash bench/gpu_lmeval_bundle.sh                    # cp312 (the GPU machine's Python 3.12)
#     PYVER=3.11 OUT=/tmp/lmeval311.tgz bash bench/gpu_lmeval_bundle.sh   # the same tree for a CPU check
# On the GPU machine: tar xzf .gpu/lmeval.tgz -C /tmp, and give evaluate jobs
# PYTHONPATH=/tmp/lmeval:/tmp/vsite:/tmp/site (bench/workflow_gpu_evaluate.py evaluate_env).
#
# Each package, --no-deps, and why it is here (read from lm_eval's own imports, 0.4.13):
#   lm_eval==0.4.13          the harness (evaluator.simple_evaluate, tasks.TaskManager, models/*)
#   sacrebleu==2.6.0         lm_eval/api/metrics.py imports it at the top (every task loads metrics.py)
#   portalocker==4.4.2 tabulate==0.10.0 colorama==0.4.6 lxml==6.1.3
#                            sacrebleu's own imports at `import sacrebleu` (lxml: its WMT xml reader)
#   more-itertools==11.2.1   lm_eval/models/huggingface.py + utils (distribute, batching)
#   sqlitedict==2.1.0        lm_eval/caching (imported by api/model.py's CachingLM module)
#   word2number==1.1         lm_eval/api/metrics.py helpers for numeric answers
#   tenacity==9.2.1          lm_eval/models/api_models.py (local-completions) refuses to start without it
# Left out (lm_eval requires them in its metadata, none is imported on these paths): evaluate,
# scikit-learn, rouge-score, pytablewriter, jsonlines, zstandard, nltk — tasks that need one
# (f1 via sklearn, rouge, bleu-only ...) say so at import; add them with EXTRA_PKGS="name==ver ...".
set -euo pipefail
root=$(git rev-parse --show-toplevel)
cd "$root"
grep -qx '/.gpu/' .git/info/exclude 2>/dev/null || echo '/.gpu/' >> .git/info/exclude
PYVER=${PYVER:-3.12}
abi="cp${PYVER/./}"
OUT=${OUT:-.gpu/lmeval.tgz}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
plat=()
for i in $(seq 39 -1 17); do plat+=(--platform "manylinux_2_${i}_x86_64"); done
plat+=(--platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform any)
# shellcheck disable=SC2206
pkgs=(lm_eval==0.4.13 sacrebleu==2.6.0 portalocker==4.4.2 tabulate==0.10.0 colorama==0.4.6 lxml==6.1.3
      more-itertools==11.2.1 sqlitedict==2.1.0 word2number==1.1 tenacity==9.2.1 ${EXTRA_PKGS:-})
python3 -m pip download -q --no-deps --python-version "$PYVER" --implementation cp \
  --abi "$abi" --abi abi3 --abi none "${plat[@]}" "${pkgs[@]}" -d "$work/wheels"
# word2number and sqlitedict publish sdists only: build those two wheels here (pure Python)
for sd in "$work"/wheels/*.tar.gz; do
  [ -e "$sd" ] || continue
  python3 -m pip wheel -q --no-deps --no-build-isolation -w "$work/wheels" "$sd" 2>/dev/null \
    || python3 -m pip wheel -q --no-deps -w "$work/wheels" "$sd"
  rm -f "$sd"
done
python3 -m pip install -q --no-deps --no-compile --target "$work/lmeval" --python-version "$PYVER" \
  --implementation cp --only-binary=:all: "${plat[@]}" "$work"/wheels/*.whl
rm -rf "$work/lmeval/bin"
find "$work/lmeval" -name __pycache__ -prune -exec rm -rf {} +
# lm_eval's built-in task catalogue is 30 MB of YAML; TaskManager scans it only when a task is not
# among the job's own (runners/payloads/evaluate.py task_manager), so it stays: Hub benchmarks
# (hellaswag, mmlu, ...) need their YAML. KEEP_TASKS=0 drops it for local-task-only runs.
if [ "${KEEP_TASKS:-1}" = 0 ]; then
  find "$work/lmeval/lm_eval/tasks" -mindepth 1 -maxdepth 1 -type d -exec rm -rf {} +
fi
{ echo "lm-eval tree for the GPU machine ($abi x86_64), built $(date -u +%FT%TZ) by bench/gpu_lmeval_bundle.sh"
  ls "$work/lmeval" | grep dist-info | sed 's/.dist-info//' | sort; } > "$work/lmeval/BUNDLE.txt"
mkdir -p "$(dirname "$OUT")"
tar --sort=name --owner=0 --group=0 --numeric-owner --mtime='2026-12-01 00:00Z' -czf "$OUT" -C "$work" lmeval
ls -la "$OUT"
