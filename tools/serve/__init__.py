"""Serving with vLLM: plan a server, check its flags on the host, run it as a job, talk to it.

The modules, in the order a start_vllm_server call meets them:

* ``start.py`` (and ``stop.py``): the tools; start only orchestrates the steps below and
  submits through tools/submit.py; ``schema.py`` holds their models and the plan's.
* ``resolve.py``: the request on its host (model architecture, GPUs, adapters, served names).
* ``host.py``: what a host has (its vLLM, bitsandbytes, free ports, GPU memory after a stop),
  each asked by a host probe (runners/payloads/probes/).
* ``plan.py``: TP, PP, context and quantization by vLLM's own rules (``vllm_memory.py``).
* ``command.py`` with ``flags.py``: the ``vllm serve`` command from a typed spec, checked
  against the host's flags.
* ``runtime.py``: a running server's endpoint (tunnels) and API key, kept per MCP server.
* ``connection.py``: a server job found by its id (for ``client.py`` and ``bench.py``).
* ``client.py`` (query_model) and ``bench.py`` (benchmark_server, as ``vllm bench serve`` measures).

This file imports nothing on purpose: the estimator (tools/memory.py) imports
``vllm_memory`` and the planner imports the estimator, so a package that re-exported the
tools would close a circle, and importing one module would load all of them.
"""
