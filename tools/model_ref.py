"""The one rule for a model (or dataset) reference in a tool's arguments: a Hub id, or a path.

Why one rule: the value reaches argv lists, job.json and the host's file system, so every tool
must refuse the same things (an option such as ``--help``, control characters, a Hub id the Hub
itself would refuse) and accept the same things. What differs per field is only which forms it
takes, and that is a parameter:

* ``paths="none"``: a Hub repository id only (download_model fetches from the Hub);
* ``paths="absolute"``: also an absolute or home-relative path on the host (``/``, ``~``);
* ``paths="relative"``: also ``./`` and ``../`` paths (submit_finetune's dataset may be a file on the
  controller, named relative to the server's directory, which is uploaded into the job).

The Hub id rule is huggingface_hub's own (``huggingface_hub/utils/_validators.py``
``validate_repo_id``: an optional namespace and a name of 1-96 of ``[A-Za-z0-9_.-]``, no ``--`` or
``..``, not ending in ``.git``), with the first character a letter or digit.
"""

from __future__ import annotations

import re
from pathlib import PurePosixPath
from typing import Literal

__all__ = ["HUB_ID", "MAX_REF_LEN", "PathForms", "check_arg", "check_ref", "is_hub_id"]

_PART = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,95}"
HUB_ID = re.compile(rf"^(?:{_PART}/)?{_PART}$")
MAX_REF_LEN = 1024
_CTRL = re.compile(r"[\x00-\x1f\x7f]")
PathForms = Literal["none", "absolute", "relative"]


def is_hub_id(v: str) -> bool:
    """True for what the Hub accepts as a repository id (module docstring)."""
    return bool(HUB_ID.match(v)) and "--" not in v and ".." not in v and not v.endswith(".git")


def check_arg(v: str, what: str = "model") -> str:
    """The part of the rule every model reference obeys, whatever forms a tool accepts: it becomes one
    argv element of a host command, so not empty, no leading '-', no control characters, at most
    MAX_REF_LEN. Serving stops here (``vllm serve`` takes any Hub id or host path, and says so itself)."""
    if not v or v.startswith("-") or _CTRL.search(v) or len(v) > MAX_REF_LEN:
        raise ValueError(f"{what} {v!r} is not a Hub id or a path")
    return v


def check_ref(v: str, what: str = "model", *, paths: PathForms = "absolute") -> str:
    """``v`` stripped, or ValueError naming ``what`` and the forms it takes (a pydantic validator's message)."""
    v = check_arg(v.strip(), what)
    if is_hub_id(v):
        return v
    if paths == "none":
        raise ValueError(f"{what} {v!r} is not a Hub repository id (org/name)")
    if v.startswith(("/", "~")):
        return v
    if paths == "relative" and v.startswith(("./", "../")):
        return v
    if paths == "absolute" and ".." in PurePosixPath(v).parts:
        raise ValueError(f"{what} {v!r}: use an absolute path")
    where = "a path" if paths == "relative" else "an absolute path on the host"
    raise ValueError(f"{what} {v!r} is neither a Hub id (org/name) nor {where}")
