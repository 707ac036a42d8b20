"""Host probes: small self-contained scripts that answer one question about a host.

Each file here runs on the host, in one round trip, through the host's Transport
(runners/probes.py ``probe_argv``): a ``.py`` file as ``<host python> -c <its text> ARGS``, a
``.sh`` file as ``bash -c <its text> llm-ops-<name> ARGS``. It prints its answer on stdout (one
JSON object, or lines its caller parses) and writes nothing. Unlike a payload it is not a job:
it must finish in seconds. Stdlib only (the host's interpreter may have nothing else) apart
from the host library a probe asks about (hf_cache.py: huggingface_hub, imported under a
try), and input reaches it only as argv elements, never inside its text. Nothing imports
these modules: they are read as text.
"""
