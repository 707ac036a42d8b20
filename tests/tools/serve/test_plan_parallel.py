"""start_vllm_server's split across GPUs: tensor parallel within a stage, pipeline stages over layers.

Pure planning plus the flags against the recorded ``vllm serve --help=all`` of 0.26.0, where
``--pipeline-parallel-size`` exists (and ``--nnodes/--node-rank/--headless`` for multi-node).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from runners.accelerators import TIERS
from runners.errors import InvalidInput
from tools.models import resolve_model
from tools.serve.flags import VllmServeArgs, parse_help, to_argv
from tools.serve.plan import plan_server
from tools.serve.schema import StartServerInput

HELP = Path(__file__).parents[2] / "data" / "vllm" / "serve-help-all-0.26.0.txt"
MODEL = "meta-llama/Llama-3.1-70B"


def _plan(gpus: int, **kw: object):
    return plan_server(
        resolve_model(MODEL), StartServerInput(model=MODEL, max_model_len=8192, **kw), TIERS["H100"], gpus
    )


def test_pipeline_stages_split_layers_and_explain_the_split():
    one = _plan(8)
    two = _plan(8, pipeline_parallel_size=2)
    assert two.pipeline_parallel_size == 2 and two.tensor_parallel_size <= one.tensor_parallel_size
    assert "80 layers in 2 stages of at most 40" in two.reasons[0]
    assert f"{two.tensor_parallel_size * 2} GPUs" in two.reasons[0]
    four = _plan(8, pipeline_parallel_size=4, tensor_parallel_size=2)
    assert (four.tensor_parallel_size, four.pipeline_parallel_size) == (2, 4)


def test_pipeline_refusals():
    with pytest.raises(InvalidInput, match="needs at least 4 GPUs"):
        _plan(2, pipeline_parallel_size=4)
    small = "meta-llama/Llama-3.2-1B"  # 16 layers
    with pytest.raises(InvalidInput, match="16 layers"):
        plan_server(resolve_model(small), StartServerInput(model=small, pipeline_parallel_size=32), TIERS["H100"], 64)
    with pytest.raises(InvalidInput, match="needs 4 GPUs"):  # TP within a 2-GPU stage share of 4 GPUs
        _plan(4, pipeline_parallel_size=2, tensor_parallel_size=4)


def test_flags_exist_in_the_recorded_vllm():
    known = parse_help(HELP.read_text(encoding="utf-8"), "0.26.0", str(HELP))
    argv = to_argv(VllmServeArgs(model=MODEL, tensor_parallel_size=2, pipeline_parallel_size=2), known)
    assert argv[argv.index("--tensor-parallel-size") + 1] == "2"
    assert argv[argv.index("--pipeline-parallel-size") + 1] == "2"
    assert {"nnodes", "node-rank", "headless", "pipeline-parallel-size"} <= set(known.flags)


def _split(
    plan_gpus: tuple[int, int], agents: int, per_node: int | None = 8, tasks_per_node: int = 1, auto_pp: bool = False
):
    from tools.serve.plan import split_over_nodes
    from tools.serve.schema import ServePlan

    plan = ServePlan(tensor_parallel_size=plan_gpus[0], pipeline_parallel_size=plan_gpus[1])
    return plan, split_over_nodes(plan, agents, tasks_per_node, per_node, auto_pp)


def test_a_server_over_nodes_splits_tp_x_pp_evenly_and_says_how():
    plan, per = _split((8, 2), 2, auto_pp=True)
    assert per == 8 and plan.nodes == 2
    assert "2 vLLM processes with 8 GPU(s) each, one pipeline stage per node" in plan.reasons[0]
    plan, per = _split((16, 1), 2)  # TP across nodes works, but is said to be the slow way
    assert per == 8 and "TP spans nodes" in plan.reasons[0]
    plan, per = _split((4, 1), 1)
    assert per == 4 and plan.nodes == 1 and not plan.reasons
    with pytest.raises(InvalidInput, match="do not split evenly over 2 nodes"):
        _split((3, 1), 2)
    with pytest.raises(InvalidInput, match="needs 8 GPUs per node; the host's nodes have 4"):
        _split((8, 2), 2, per_node=4)


def test_multinode_flags_exist_in_the_recorded_vllm():
    from tools.serve.flags import MULTINODE_TASK_FLAGS

    known = parse_help(HELP.read_text(encoding="utf-8"), "0.26.0", str(HELP))
    argv = to_argv(
        VllmServeArgs(
            model=MODEL, tensor_parallel_size=8, pipeline_parallel_size=2, nnodes=2, distributed_executor_backend="mp"
        ),
        known,
    )
    assert argv[argv.index("--nnodes") + 1] == "2"
    assert argv[argv.index("--distributed-executor-backend") + 1] == "mp"
    assert all(known.get(f) for f in MULTINODE_TASK_FLAGS)
    old = known.model_copy(update={"flags": {k: v for k, v in known.flags.items() if k != "nnodes"}})
    with pytest.raises(InvalidInput, match="has no --nnodes"):
        to_argv(VllmServeArgs(model=MODEL, nnodes=2), old)
