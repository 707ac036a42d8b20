"""The SLURM command builders and parsers, as plain functions (no cluster needed)."""

from __future__ import annotations

import pytest

from runners.config import SlurmConfig
from runners.errors import InvalidInput
from runners.launchers.slurm.commands import (
    SEP,
    format_time_minutes,
    parse_sacct,
    parse_sbatch_id,
    parse_squeue,
    resolve_options,
    sacct_argv,
    sacct_disabled,
    sbatch_argv,
    scancel_argv,
    squeue_argv,
    squeue_by_name_argv,
    squeue_forgot_all,
)

JOB_DIR = "/scratch/me/llm-ops/jobs/ft-abc"


def _opts(cfg: SlurmConfig | None = None, **kw):
    base = {"job_name": "llmops-ft-abc", "token": "tok-123", "job_dir": JOB_DIR}
    return resolve_options(cfg or SlurmConfig(), **{**base, **kw})


def test_sbatch_argv_carries_everything_from_the_host_config():
    cfg = SlurmConfig(
        partition="pli",
        account="mylab",
        qos="high",
        constraint="h100&ib",
        gres="gpu:h100",
        time_limit="06:00:00",
        mem="64G",
        cpus_per_task=8,
    )
    argv = sbatch_argv(_opts(cfg, gpus=4), f"{JOB_DIR}/run.sh")
    assert argv[:2] == ["sbatch", "--parsable"]
    assert argv[-2:] == ["--", f"{JOB_DIR}/run.sh"]
    for flag in (
        "--job-name=llmops-ft-abc",
        "--comment=tok-123",
        f"--output={JOB_DIR}/output.log",
        f"--chdir={JOB_DIR}",
        "--gres=gpu:h100:4",
        "--time=06:00:00",
        "--partition=pli",
        "--account=mylab",
        "--qos=high",
        "--constraint=h100&ib",
        "--mem=64G",
        "--cpus-per-task=8",
        "--no-requeue",
    ):
        assert flag in argv


def test_job_overrides_win_over_the_host_config():
    cfg = SlurmConfig(partition="pli", mem="64G", cpus_per_task=8, time_limit="06:00:00")
    argv = sbatch_argv(_opts(cfg, partition="b200", memory_gib=1.5, cpus=2, time_limit_s=90, gpus=1), "/j/run.sh")
    assert "--partition=b200" in argv and "--partition=pli" not in argv
    assert "--mem=1536M" in argv
    assert "--cpus-per-task=2" in argv
    assert "--time=00:02:00" in argv  # 90 s rounds up to whole minutes
    assert "--gres=gpu:1" in argv


def test_no_gpus_means_no_gres_and_unset_values_are_left_out():
    argv = sbatch_argv(_opts(), "/j/run.sh")
    assert not any(a.startswith(("--gres", "--partition", "--account", "--qos", "--mem", "--cpus")) for a in argv)


@pytest.mark.parametrize(
    "bad",
    [
        {"partition": "-p"},
        {"partition": "a b"},
        {"job_name": "--wrap=x"},
        {"token": "-x"},
        {"partition": "x;rm"},
        {"job_dir": "relative/dir"},
    ],
)
def test_values_that_could_be_flags_or_shell_are_refused(bad):
    with pytest.raises(InvalidInput):
        _opts(**bad)


def test_format_time_minutes():
    assert format_time_minutes(1) == "00:01:00"
    assert format_time_minutes(60) == "00:01:00"
    assert format_time_minutes(3601) == "01:01:00"
    assert format_time_minutes(2 * 86400 + 60) == "2-00:01:00"
    with pytest.raises(InvalidInput):
        format_time_minutes(0)


def test_parse_sbatch_id():
    assert parse_sbatch_id("12345\n") == "12345"
    assert parse_sbatch_id("12345;della\n") == "12345"
    with pytest.raises(ValueError):
        parse_sbatch_id("sbatch: error: nope")


def test_squeue_is_one_call_for_many_jobs_with_a_fixed_separator():
    argv = squeue_argv([str(i) for i in range(1, 51)])
    assert argv[0] == "squeue" and "--noheader" in argv and "--states=all" in argv
    assert argv[-1] == "--jobs=" + ",".join(str(i) for i in range(1, 51))
    fmt = next(a for a in argv if a.startswith("--format="))
    assert SEP in fmt
    with pytest.raises(InvalidInput):
        squeue_argv(["12", "-1"])
    with pytest.raises(InvalidInput):
        squeue_by_name_argv("--me")


def test_parse_squeue_keeps_commas_and_pipes_in_values():
    line = SEP.join(["42", "llmops-a", "PENDING", "Resources", "", "tok|1,2", "0:00", "1:00:00", "debug"])
    line2 = SEP.join(["43", "llmops-b", "RUNNING", "None", "node[1-2],gpu7", "(null)", "5:01", "UNLIMITED", "pli"])
    rows = parse_squeue(line + "\n" + line2 + "\n")
    assert rows[0].comment == "tok|1,2" and rows[0].reason == "Resources"
    assert rows[1].nodes == "node[1-2],gpu7" and rows[1].comment == "" and rows[1].reason == ""
    with pytest.raises(ValueError):
        parse_squeue("42|x|RUNNING\n")


def test_squeue_forgot_all_and_sacct_disabled():
    assert squeue_forgot_all(1, "slurm_load_jobs error: Invalid job id specified")
    assert not squeue_forgot_all(1, "slurm_load_jobs error: Unable to contact slurm controller")
    assert sacct_disabled(1, "Slurm accounting storage is disabled")


def test_sacct_argv_and_parse():
    argv = sacct_argv(["7", "8"])
    assert "--parsable2" in argv and f"--delimiter={SEP}" in argv and argv[-1] == "--jobs=7,8"
    out = SEP.join(["7", "llmops-a", "TIMEOUT", "0:15", "None", "n1", "tok"]) + "\n"
    out += SEP.join(["8", "llmops-b", "CANCELLED by 0", "0:0", "None", "None assigned", "(null)"]) + "\n"
    rows = parse_sacct(out)
    assert rows[0].state == "TIMEOUT" and rows[0].exit_code == 0 and rows[0].signal == 15
    assert rows[1].nodes == "" and rows[1].comment == ""


def test_scancel_argv():
    assert scancel_argv(["5"]) == ["scancel", "--", "5"]
    assert scancel_argv(["5", "6_1"], "TERM") == ["scancel", "--signal=TERM", "--full", "--", "5", "6_1"]
    with pytest.raises(InvalidInput):
        scancel_argv(["--me"])
