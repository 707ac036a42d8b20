#!/usr/bin/env bash
# Builds .gpu/llmc.tgz in the current repo: llm-compressor and what it needs beyond the GPU test
# machine's venv and the fine-tune tree (.gpu/site.tgz), for quantize_model's fp8/gptq/awq on that
# machine (Python 3.12, torch 2.11, transformers 5.17). Usage, from the repo root:
#     bash bench/gpu_llmc_bundle.sh
# On the GPU machine: tar xzf .gpu/llmc.tgz -C /tmp, and give quantize jobs
# PYTHONPATH=/tmp/llmc:/tmp/site (bench/workflow_gpu.py's host config does).
#
# Why a tree of its own: vLLM 0.26.0 pins compressed-tensors 0.17.0 (in /tmp/vsite) and
# llmcompressor 0.14.0.1 pins 0.19.0, so compressing and serving get separate trees; the quantize
# job must not see /tmp/vsite. Each package, --no-deps, and why it is here:
#   llmcompressor==0.14.0.1     oneshot + QuantizationModifier/GPTQModifier/AWQModifier
#   compressed-tensors==0.19.0  the format it writes (llmcompressor's exact pin)
#   loguru==0.7.3               llmcompressor's and compressed-tensors' logger
#   nvidia-ml-py==13.615.71     llmcompressor requires it (pynvml)
#   pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5
#   typing-extensions==4.16.0   compressed-tensors' schemes are pydantic models; the same pins the
#                               vLLM bundle carries for this machine (its venv lacks pydantic)
# Already there (the machine's venv or the fine-tune tree): torch, transformers, accelerate,
# datasets, numpy, pyyaml, requests, tqdm, psutil, safetensors, huggingface_hub.
# Required by llmcompressor's metadata but left out (10 MB of 14): auto-round (+ py-cpuinfo), imported
# only by AutoRoundModifier, and pillow, imported only by its Kimi-K3 vision model; the modifier
# registry skips a module that fails to import, and quantize.py uses neither.
set -euo pipefail
root=$(git rev-parse --show-toplevel)
cd "$root"
grep -qx '/.gpu/' .git/info/exclude 2>/dev/null || echo '/.gpu/' >> .git/info/exclude
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
plat=()
for i in $(seq 39 -1 17); do plat+=(--platform "manylinux_2_${i}_x86_64"); done
plat+=(--platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform any)
pkgs=(llmcompressor==0.14.0.1 compressed-tensors==0.19.0 loguru==0.7.3 nvidia-ml-py==13.615.71 pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0
      typing-inspection==0.4.5 typing-extensions==4.16.0)
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --abi cp312 --abi abi3 --abi none "${plat[@]}" "${pkgs[@]}" -d "$work/wheels"
python3 -m pip install -q --no-deps --no-compile --target "$work/llmc" --python-version 3.12 \
  --implementation cp --only-binary=:all: "${plat[@]}" "$work"/wheels/*.whl
rm -rf "$work/llmc/bin"
find "$work/llmc" -name __pycache__ -prune -exec rm -rf {} +
{ echo "llm-compressor tree for the GPU machine (cp312 x86_64), built $(date -u +%FT%TZ) by bench/gpu_llmc_bundle.sh"
  ls "$work/llmc" | grep dist-info | sed 's/.dist-info//' | sort; } > "$work/llmc/BUNDLE.txt"
mkdir -p .gpu
tar --sort=name --owner=0 --group=0 --numeric-owner --mtime='2026-12-01 00:00Z' -czf .gpu/llmc.tgz -C "$work" llmc
ls -la .gpu/llmc.tgz
