"""Host probes: the scripts of runners/payloads/probes/ as the argv that runs one on a host.

Why files and not strings inside the tools: a probe is a program that runs on the host, like
a payload, so it lives beside the payloads, is read, linted and tested as the program it is,
and is shipped the way payloads are — its text read from this package's resources
(``importlib.resources``, as the engine reads a payload) — only not into a job directory:
a probe answers within seconds and writes nothing, so its text is the argument of ``python
-c`` (``.py``) or ``bash -c`` (``.sh``) and the caller runs that argv through the host's
Transport (``transport.run``), wrapping it in ``env K=V`` where the host's environment
matters. Arguments are separate argv elements, never spliced into the text.

To add one: put ``<name>.py`` (stdlib only, prints its answer) or ``<name>.sh`` into
runners/payloads/probes/, say in its first lines what it prints and who reads it, and run
``probe_argv("<name>.py", *args, python=host.interpreter)``.
"""

from __future__ import annotations

import functools
import re
from importlib.resources import files

from runners.errors import InvalidInput, NotFound

__all__ = ["PROBES_PACKAGE", "probe_argv", "probe_source"]

PROBES_PACKAGE = "runners.payloads.probes"
_NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}\.(py|sh)$")


@functools.cache
def probe_source(name: str) -> str:
    """The text of ``runners/payloads/probes/<name>`` (read once per process)."""
    if not _NAME.match(name):
        raise InvalidInput(f"{name!r} is not a probe file name.", "Name a .py or .sh file in runners/payloads/probes/.")
    src = files(PROBES_PACKAGE).joinpath(name)
    if not src.is_file():
        raise NotFound(f"There is no host probe {name!r}.", "Probes live in runners/payloads/probes/.")
    return src.read_text(encoding="utf-8")


def probe_argv(name: str, *args: str, python: str = "python3") -> list[str]:
    """The argv that runs probe ``name`` with ``args`` on a host (``python``: the host's interpreter).

    ``.py``: ``python -c TEXT ARGS`` (``sys.argv[1:]`` are ARGS); ``.sh``: ``bash -c TEXT
    llm-ops-<name> ARGS`` (``$0`` names the probe in bash's messages, ``$1``... are ARGS).
    """
    text = probe_source(name)
    if name.endswith(".py"):
        return [python, "-c", text, *args]
    return ["bash", "-c", text, f"llm-ops-{name.removesuffix('.sh').replace('_', '-')}", *args]
