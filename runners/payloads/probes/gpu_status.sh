# Host probe: what the host's GPUs are doing now, both nvidia-smi queries in one round trip.
# No arguments. Prints the --query-gpu CSV, the line "--- llm-ops compute-apps ---", then the
# --query-compute-apps CSV; exits 127 when there is no nvidia-smi, nvidia-smi's own code when the
# GPU query fails. Read by tools/gpu_status.py query_gpu_status (the queries are its GPU_QUERY,
# APPS_QUERY and FORMAT, which a test holds to this text).
command -v nvidia-smi >/dev/null 2>&1 || { echo "nvidia-smi not found on PATH" >&2; exit 127; }
nvidia-smi --query-gpu=index,uuid,name,memory.total,memory.used,memory.free,utilization.gpu,temperature.gpu --format=csv,noheader,nounits || exit $?
echo '--- llm-ops compute-apps ---'
nvidia-smi --query-compute-apps=gpu_uuid,pid,process_name,used_memory --format=csv,noheader,nounits || echo "compute-apps query failed" >&2
