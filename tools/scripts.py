"""submit_script: clone a git repository into the job directory and run ``python script args`` there.

The job form users know from their GPU job managers. Why it is guarded so closely: it
runs code the agent chose on the user's machine, so it is off unless the host's config
says ``allow_scripts = true``; the repository URL, the ref and the script path are
validated here; ``args`` stay an argv list end to end (never a shell string); and the
clone itself is hardened — ``--`` before positionals, ``GIT_ALLOW_PROTOCOL`` limits git
to file/git/ssh/https (no ``ext::`` command transports, not even from submodules), and
``GIT_TERMINAL_PROMPT=0`` makes a credential prompt fail instead of hanging the job.

The job runs a *constant* bash script; every value reaches it as a positional
parameter, so nothing from input is ever parsed by a shell.
"""

from __future__ import annotations

import re
from pathlib import PurePosixPath
from typing import TYPE_CHECKING

from pydantic import Field, field_validator

from runners.config import HostConfig
from runners.errors import InvalidInput
from runners.spec import ENV_NAME_RE, JobSpec, Resources, validate_argv
from tools.submit import SubmitOutput, TimedSubmitOptions, next_action, submit

if TYPE_CHECKING:
    from tools.context import ToolContext

__all__ = [
    "CLONE_AND_RUN",
    "SubmitScriptInput",
    "SubmitScriptOutput",
    "build_script_spec",
    "submit_script",
    "validate_ref",
    "validate_repo",
    "validate_script_path",
]

_URL = re.compile(r"^(https|ssh|git|file)://[^\s\x00-\x1f]+$")
_SCP = re.compile(r"^[A-Za-z0-9._-]+@[A-Za-z0-9.-]+:[A-Za-z0-9._~/-][^\s\x00-\x1f]*$")
_LOCAL = re.compile(r"^(/|~/)[^\s\x00-\x1f]*$")
_REF = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/+-]{0,199}$")
_SCRIPT = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._/+-]{0,299}$")
GIT_PROTOCOLS = "file:git:ssh:https"

# $1 repo, $2 ref ("" = the default branch), $3 script, $4 python, then the script's args.
CLONE_AND_RUN = r"""set -euo pipefail
repo=$1; ref=$2; script=$3; py=$4; shift 4
if [ -d src/.git ]; then
  git -C src fetch --quiet --tags origin
else
  git clone --quiet --no-checkout -- "$repo" src
fi
cd src
if [ -n "$ref" ]; then
  if git rev-parse --verify --quiet "refs/remotes/origin/$ref^{commit}" >/dev/null; then
    commit=$(git rev-parse "refs/remotes/origin/$ref^{commit}")
  elif commit=$(git rev-parse --verify --quiet "$ref^{commit}"); then :
  else
    git fetch --quiet origin -- "$ref" 2>/dev/null && commit=$(git rev-parse --verify --quiet "FETCH_HEAD^{commit}") || {
      echo "RefNotFound: ref '$ref' is not a branch, tag or commit of $repo" >&2; exit 3; }
  fi
else
  commit=$(git rev-parse "refs/remotes/origin/HEAD^{commit}" 2>/dev/null || git rev-parse "HEAD^{commit}")
fi
git checkout --quiet --detach "$commit" --
if [ -f .gitmodules ]; then git submodule update --quiet --init --recursive; fi
"$py" -c 'import json, sys; json.dump(dict(zip(("repo", "ref", "commit"), sys.argv[1:4])), open(sys.argv[4], "w"))' \
  "$repo" "$ref" "$commit" "${LLM_OPS_OUTPUTS:-../outputs}/source.json"
echo "[llm-ops] $repo at ${ref:-default branch} = $commit; running $script"
if [ ! -f "$script" ]; then echo "ScriptNotFound: $script is not a file in $repo at $commit" >&2; exit 4; fi
case "$(realpath -- "$script")" in
  "$(pwd -P)"/*) ;;
  *) echo "ScriptOutsideRepo: $script resolves (through a symlink) outside the repository" >&2; exit 4 ;;
esac
exec "$py" "$script" "$@"
"""


def validate_repo(v: str) -> str:
    """https/ssh/git/file URLs, scp-like ``user@host:path``, or an absolute (``/``, ``~/``) path on the host."""
    v = v.strip()
    if not v or v.startswith("-") or "::" in v or "\x00" in v:
        raise ValueError(f"{v!r} is not an accepted repository (no options, no '::' transports such as ext::)")
    if not (_URL.match(v) or _SCP.match(v) or _LOCAL.match(v)):
        raise ValueError(f"{v!r}: give an https://, ssh://, git://, file:// URL, git@host:path, or an absolute path")
    return v


def validate_ref(v: str) -> str:
    """A branch, tag or commit, in the shape ``git check-ref-format`` accepts (and never an option)."""
    bad = (
        not _REF.match(v)
        or ".." in v
        or "@{" in v
        or "//" in v
        or v.endswith((".lock", "/", "."))
        or any(part.startswith(".") for part in v.split("/"))
    )
    if bad:
        raise ValueError(f"{v!r} is not a valid branch, tag or commit name")
    return v


def validate_script_path(v: str) -> str:
    """A relative path inside the repository, no ``..``, not an option."""
    if not _SCRIPT.match(v) or ".." in PurePosixPath(v).parts:
        raise ValueError(f"{v!r} must be a relative path inside the repository (no '..', no leading '/' or '-')")
    return v


class SubmitScriptInput(TimedSubmitOptions):
    """Arguments of submit_script."""

    repo: str = Field(description="Git URL (https://, ssh://, git@host:path, file://) or an absolute path on the host.")
    script: str = Field(description="Path of the Python script inside the repository, e.g. 'train.py'.")
    ref: str | None = Field(None, description="Branch, tag or commit; the default branch when omitted.")
    args: list[str] = Field(default=[], description="The script's arguments, as a list (never a shell string).")
    gpus: int = Field(0, ge=0, le=64, description="GPUs per node (SLURM --gpus; informational on direct hosts).")
    env: dict[str, str] = Field({}, description="Extra environment variables (not secrets).")
    name: str | None = Field(None, max_length=120, description="A short label for list_jobs.")

    @field_validator("repo")
    @classmethod
    def _repo(cls, v: str) -> str:
        return validate_repo(v)

    @field_validator("ref")
    @classmethod
    def _ref(cls, v: str | None) -> str | None:
        return None if v is None else validate_ref(v)

    @field_validator("script")
    @classmethod
    def _script(cls, v: str) -> str:
        return validate_script_path(v)

    @field_validator("args")
    @classmethod
    def _args(cls, v: list[str]) -> list[str]:
        validate_argv(["python", *v])
        return v

    @field_validator("env")
    @classmethod
    def _env(cls, v: dict[str, str]) -> dict[str, str]:
        for k in v:
            if not ENV_NAME_RE.match(k) or k.startswith("GIT_"):
                raise ValueError(f"{k!r} is not an environment variable name this tool accepts")
        return v


class SubmitScriptOutput(SubmitOutput):
    repo: str
    ref: str | None
    script: str


def build_script_spec(p: SubmitScriptInput, host: HostConfig) -> JobSpec:
    """The job; refuses a host whose config does not allow scripts (dry runs included: nothing is shown
    for a host that would never run it)."""
    if not host.allow_scripts:
        raise InvalidInput(
            f"Host {host.name!r} does not allow scripts.",
            f"Set allow_scripts = true in [hosts.{host.name}] of the config to allow submit_script there.",
        )
    argv = ["bash", "-c", CLONE_AND_RUN, "llm-ops-script", p.repo, p.ref or "", p.script, host.interpreter, *p.args]
    env = {
        **p.env,
        "GIT_ALLOW_PROTOCOL": GIT_PROTOCOLS,
        "GIT_TERMINAL_PROMPT": "0",
        "GIT_SSH_COMMAND": "ssh -o BatchMode=yes",
    }
    return JobSpec(
        kind="script",
        name=p.name or f"{p.script} @ {p.repo.rsplit('/', 1)[-1]}"[:120],
        argv=argv,
        env=env,
        resources=Resources(gpus=p.gpus, time_limit_s=p.time_limit_s),
    )


async def submit_script(ctx: ToolContext, p: SubmitScriptInput) -> SubmitScriptOutput:
    """The tool: build the clone-and-run job (refused on hosts without allow_scripts) and submit it."""
    host = ctx.host(p.host)
    res = await submit(ctx, host, build_script_spec(p, host), p)
    return SubmitScriptOutput(
        **res.model_dump(),
        repo=p.repo,
        ref=p.ref,
        script=p.script,
        next_action=next_action(res, f"Follow it with get_job_logs(job_id='{res.job_id}') or wait_for_job."),
    )
