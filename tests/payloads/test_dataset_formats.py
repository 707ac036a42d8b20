"""The stdlib dataset checker that the controller runs before submitting and the payload runs on the host."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from runners.payloads import dataset_formats as dsf
from tests.helpers.tiny_model import FORMATS, make_rows, write_jsonl


@pytest.mark.parametrize("fmt", FORMATS)
def test_auto_detects_every_format(fmt: str) -> None:
    assert dsf.check_rows(make_rows(fmt, 8)) == dsf.DatasetCheck(format=fmt, rows=8)


@pytest.mark.parametrize(
    ("fmt", "row", "message"),
    [
        ("alpaca", {"output": "x"}, "dataset row 1 has no 'instruction' field; alpaca needs instruction/output"),
        ("alpaca", {"instruction": "q", "output": None}, "has no 'output' field"),
        ("prompt_completion", {"prompt": "p", "completion": 3}, "field 'completion' is a int, not text"),
        ("messages", {"messages": []}, "must be a non-empty list of turns"),
        ("messages", {"messages": [{"role": "user", "content": "hi"}]}, "has no assistant turn"),
        ("messages", {"messages": [{"role": "robot", "content": "hi"}]}, "has role 'robot'"),
        ("sharegpt", {"conversations": [{"from": "human"}]}, "turn 1 needs 'from' and 'value'"),
        ("text", {"text": "  "}, "empty 'text' field"),
        ("text", ["not", "a", "row"], "is a list, not an object"),
    ],
)
def test_errors_name_the_row_and_what_the_format_needs(fmt: str, row: object, message: str) -> None:
    with pytest.raises(dsf.DatasetFormatError, match=message.replace("(", r"\(")):
        dsf.check_rows([row], fmt)


def test_row_numbers_are_one_based_and_auto_uses_the_first_row(tmp_path: Path) -> None:
    rows = make_rows("alpaca", 5)
    rows[3] = {"text": "plain"}
    with pytest.raises(dsf.DatasetFormatError, match="dataset row 4 has no 'instruction' field"):
        dsf.check_file(write_jsonl(tmp_path / "d.jsonl", rows))


def test_unknown_fields_cannot_be_detected() -> None:
    with pytest.raises(dsf.DatasetFormatError, match="cannot tell the dataset format"):
        dsf.check_rows([{"question": "q", "answer": "a"}])


def test_files_json_csv_and_bad_json(tmp_path: Path) -> None:
    (tmp_path / "d.json").write_text(json.dumps({"data": make_rows("prompt_completion", 3)}))
    assert dsf.check_file(tmp_path / "d.json").format == "prompt_completion"
    (tmp_path / "d.csv").write_text("instruction,input,output\nq,,a\nq2,,a2\n")
    assert dsf.check_file(tmp_path / "d.csv") == dsf.DatasetCheck("alpaca", 2)
    (tmp_path / "bad.jsonl").write_text('{"text": "a"}\n{oops\n')
    with pytest.raises(dsf.DatasetFormatError, match="dataset line 2 is not valid JSON"):
        dsf.check_file(tmp_path / "bad.jsonl")
    with pytest.raises(dsf.DatasetFormatError, match="the dataset has no rows"):
        dsf.check_rows([])


def test_to_messages_folds_alpaca_input_into_the_prompt() -> None:
    msgs = dsf.to_messages({"instruction": "Translate", "input": "chat", "output": "cat"}, "alpaca")
    assert msgs == [{"role": "user", "content": "Translate\n\nchat"}, {"role": "assistant", "content": "cat"}]
    sharegpt = dsf.to_messages(make_rows("sharegpt", 1)[0], "sharegpt")
    assert [m["role"] for m in sharegpt] == ["user", "assistant"]


def test_checker_imports_without_torch() -> None:
    code = "import sys; import runners.payloads.dataset_formats; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[2]).returncode == 0


def test_oom_advice_is_pure_and_specific() -> None:
    sys.path.insert(0, str(Path(dsf.__file__).parent))
    try:
        import finetune  # the payload's top level imports only the stdlib and its siblings
        import job_io
    finally:
        sys.path.pop(0)
    cfg = {**finetune.DEFAULTS, "method": "lora", "per_device_batch_size": 4, "max_seq_length": 4096}
    assert finetune.oom_suggestion(cfg) == (
        "try method=qlora, or per_device_batch_size=2 with gradient_accumulation_steps=8, or max_seq_length=2048"
    )
    assert job_io.is_oom(RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert not job_io.is_oom(ValueError("shapes"))
