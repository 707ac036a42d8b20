# Host probe: which GPU processes of one job still hold memory, and each GPU's memory in use.
# $1: the job id. Lines: "JOB pid MiB" for GPU processes of that job (found by LLM_OPS_JOB_ID in
# their environment, which every child inherits), "GPU index used total" per GPU, or NO_SMI.
# Read by tools/serve/host.py parse_gpu_lines.
command -v nvidia-smi >/dev/null 2>&1 || { echo NO_SMI; exit 0; }
nvidia-smi --query-compute-apps=pid,used_memory --format=csv,noheader,nounits 2>/dev/null |
while IFS=', ' read -r pid mem; do
  [ -r "/proc/$pid/environ" ] || continue
  if tr '\0' '\n' < "/proc/$pid/environ" 2>/dev/null | grep -qx "LLM_OPS_JOB_ID=$1"; then echo "JOB $pid $mem"; fi
done
nvidia-smi --query-gpu=index,memory.used,memory.total --format=csv,noheader,nounits 2>/dev/null |
while IFS=', ' read -r i used total; do echo "GPU $i $used $total"; done
