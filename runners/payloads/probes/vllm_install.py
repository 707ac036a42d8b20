"""Host probe: the vLLM this interpreter has, its ``vllm`` program, and bitsandbytes' version.

Package metadata only (about a second; importing vllm takes far longer), except when the
metadata is missing. Prints one JSON object: python, version, program, bitsandbytes, error.
Read by tools/serve/host.py ``detect_vllm``.
"""

import importlib
import json
import os
import shutil
import sys
from importlib.metadata import version

out = {"python": sys.executable, "version": None, "program": None, "error": None}
try:
    out["version"] = version("vllm")
except Exception:
    try:  # an install without metadata (a source tree on the path)
        out["version"] = importlib.import_module("vllm").__version__
    except Exception as e:
        out["error"] = f"{type(e).__name__}: {e}"
try:  # vLLM's in-flight bitsandbytes quantization needs the package in this interpreter
    out["bitsandbytes"] = version("bitsandbytes")
except Exception:
    out["bitsandbytes"] = None
p = os.path.join(os.path.dirname(sys.executable), "vllm")
out["program"] = p if os.path.exists(p) else shutil.which("vllm")
print(json.dumps(out))
