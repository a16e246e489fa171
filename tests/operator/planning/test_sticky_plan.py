"""Plans are pinned and sticky (issue 19), the pure parts: the product a plan is made for becomes
the server pods' node selector; a kept plan is checked against the node inventory
(`plan_no_longer_fits`) and survives in status; a named GPU with no node yet is planned with its
usual GPUs per node. The cluster test is tests/operator/test_sticky_plan_cluster.py."""

from __future__ import annotations

import json

import pytest

from scibox_operator.api.spec import parse, short_hash
from scibox_operator.planning.serving_plan import GpuNode, decide_serving_plan, plan_no_longer_fits
from scibox_operator.reconcile.last_plan import last_known_plan, plan_inputs
from scibox_operator.reconcile.reconciler import kept_plan_note
from scibox_operator.reconcile.status import plan_status
from scibox_operator.render.deployment import GPU_PRODUCT_LABEL, render_deployment

from .conftest import load_config

H100_PRODUCT = "NVIDIA-H100-80GB-HBM3"
H100 = (("nvidia.com/gpu.memory", "81559"), ("nvidia.com/gpu.product", H100_PRODUCT))
L4 = (("nvidia.com/gpu.memory", "23034"), ("nvidia.com/gpu.product", "NVIDIA-L4"))
UNLABELLED = (("nvidia.com/gpu.memory", "81559"),)  # GFD's memory label only
LLAMA_70B = load_config("meta-llama--Llama-3.1-70B-Instruct")
LLAMA_8B = load_config("meta-llama--Llama-3.1-8B-Instruct")


def vd(resources: dict | None = None, engine: dict | None = None, **model):
    return parse({"metadata": {"name": "m", "namespace": "n", "generation": 1},
                  "spec": {"model": {"name": "org/model", "maxModelLen": 8192, **model},
                           "resources": resources or {}, "engine": engine or {}}})


def nodes(labels, count: int, gpus: int = 8, prefix: str = "n") -> list[GpuNode]:
    return [GpuNode(f"{prefix}-{i}", labels, gpus) for i in range(count)]


def plan_for(v, inventory, config=LLAMA_70B):
    return decide_serving_plan(v, config=config, safetensors_index=None, nodes=inventory, cache_shared=False)


def selector(v, plan) -> dict:
    return render_deployment(v, plan)["spec"]["template"]["spec"].get("nodeSelector", {})


# --- pinned -------------------------------------------------------------------------------------


def test_an_auto_plan_pins_the_product_it_was_made_for_in_a_mixed_cluster():
    v = vd()
    # Most nodes are H100s: the plan is made for them, so the pods must not land on the L4.
    plan = plan_for(v, nodes(H100, 3, prefix="h") + nodes(L4, 1, prefix="l"))
    assert plan.gpu_product == H100_PRODUCT and "H100" in plan.parallelism_reason
    assert selector(v, plan) == {GPU_PRODUCT_LABEL: H100_PRODUCT}


def test_the_pin_goes_when_the_nodes_carry_no_product_label_and_the_spec_product_wins():
    v = vd()
    unpinned = plan_for(v, nodes(UNLABELLED, 2))
    assert unpinned.gpu_product is None and selector(v, unpinned) == {}
    named = vd({"gpuProduct": H100_PRODUCT})
    assert selector(named, plan_for(named, nodes(H100, 2))) == {GPU_PRODUCT_LABEL: H100_PRODUCT}


def test_explicit_sizes_pin_nothing():
    v = parse({"metadata": {"name": "m", "namespace": "n"},
               "spec": {"model": {"name": "org/model"}, "parallelism": {"tensorParallelSize": 1,
                                                                         "pipelineParallelSize": 1}}})
    plan = plan_for(v, nodes(H100, 2) + nodes(L4, 3, prefix="l"), config=LLAMA_8B)
    assert plan.gpu_product is None and selector(v, plan) == {}


def test_gpus_per_node_come_from_the_planned_product_only():
    """An 8-GPU L4 node says nothing about how many H100s a node has: two 2-GPU H100 nodes
    make a 70B plan of pipeline stages across nodes, pinned to H100."""
    v = vd()
    plan = plan_for(v, nodes(H100, 3, gpus=2, prefix="h") + nodes(L4, 1, prefix="l"))
    assert plan.gpu_product == H100_PRODUCT and plan.gpus_per_pod <= 2 and plan.nodes >= 2


# --- a named product with no node yet ------------------------------------------------------------


def test_a_named_product_with_no_node_yet_is_planned_with_its_usual_eight_gpus_per_node():
    v = vd({"gpuProduct": H100_PRODUCT})
    plan = plan_for(v, [])
    # Not the 3-node, one-GPU-per-node layout of a one-GPU guess.
    assert (plan.tensor_parallel_size, plan.pipeline_parallel_size, plan.nodes) == (4, 1, 1)
    assert plan.gpu_product == H100_PRODUCT
    # The same plan as on the real nodes once the pool scales up.
    on_nodes = plan_for(v, nodes(H100, 2))
    assert (on_nodes.tensor_parallel_size, on_nodes.pipeline_parallel_size, on_nodes.nodes) == (4, 1, 1)


def test_a_one_gpu_per_node_board_is_planned_as_such_with_no_node():
    plan = plan_for(vd({"gpuProduct": "NVIDIA-GH200-480GB"}), [])
    assert plan.nodes == plan.gpus_per_replica  # one GPU (superchip) per node


# --- does the kept plan still fit? -----------------------------------------------------------------


def test_a_kept_plan_fits_while_some_node_of_its_product_holds_a_pod():
    v = vd()
    kept = plan_for(v, nodes(H100, 3))
    # Two H100 nodes relabelled to L4: a fresh plan would still pick H100 here, but even if the
    # majority flipped, one 8-GPU H100 node holds the TP-4 pod.
    assert plan_no_longer_fits(v, kept, nodes(H100, 1) + nodes(L4, 5, prefix="l")) is None
    assert plan_no_longer_fits(v, kept, []) is None, "no node at all (a pool at zero): keep it"


def test_a_kept_plan_that_no_node_holds_says_why_with_numbers():
    v = vd()
    kept = plan_for(v, nodes(H100, 2))
    gone = plan_no_longer_fits(v, kept, nodes(L4, 3, prefix="l"))
    assert gone is not None and H100_PRODUCT in gone and "3 x NVIDIA-L4 (8 GPUs)" in gone and "4 GPUs" in gone
    shrunk = plan_no_longer_fits(v, kept, nodes(H100, 2, gpus=2))
    assert shrunk is not None and f"2 x {H100_PRODUCT} (2 GPUs)" in shrunk


def test_a_multi_node_plan_needs_all_its_nodes():
    v = vd(engine={"targetConcurrentSequences": 256})  # 2M tokens of KV: two 8-GPU nodes
    kept = plan_for(v, nodes(H100, 4))
    assert kept.nodes == 2
    assert plan_no_longer_fits(v, kept, nodes(H100, 2)) is None
    assert "1 such node(s)" in (plan_no_longer_fits(v, kept, nodes(H100, 1) + nodes(L4, 1, prefix="l")) or "")


# --- kept in status ------------------------------------------------------------------------------


def test_the_pinned_product_survives_in_status_and_a_plan_without_it_keeps_none():
    v = vd()
    plan = plan_for(v, nodes(H100, 2))
    status = plan_status(plan, plan_inputs(v))
    assert status["plan"]["gpuProduct"] == H100_PRODUCT
    assert last_known_plan(v, status, cache_shared=False, image=plan.image) == plan
    del status["plan"]["gpuProduct"]  # a plan kept by an operator from before the pin
    assert last_known_plan(v, status, cache_shared=False, image=plan.image).gpu_product is None


def _digest_before_issue_19(v) -> str:
    """plan_inputs as it was written before the engine knobs joined it."""
    spec = v.spec
    inputs = {"model": spec.model.model_dump(mode="json"), "resources": spec.resources.model_dump(mode="json"),
              "parallelism": spec.parallelism.model_dump(mode="json"),
              "nodeSelector": dict(sorted(spec.node_selector.items())),
              "gpuMemoryUtilization": spec.engine.gpu_memory_utilization, "cacheSize": spec.cache.size}
    return short_hash(json.dumps(inputs, sort_keys=True), length=16)


@pytest.mark.parametrize("engine", [{"maxNumSeqs": 8}, {"maxNumBatchedTokens": 4096}, {"kvCacheDtype": "fp8"},
                                    {"targetConcurrentSequences": 2}])
def test_each_knob_changes_the_plan_inputs_and_unset_ones_keep_the_old_digest(engine):
    assert plan_inputs(vd()) == _digest_before_issue_19(vd()), "an operator upgrade re-plans nothing"
    assert plan_inputs(vd(engine=engine)) != plan_inputs(vd())
    assert plan_inputs(vd(engine={})) == plan_inputs(vd())


def test_a_forced_re_plan_stays_reported_while_its_plan_is_kept():
    forced = {"conditions": [{"type": "ParallelismPlanned", "status": "True", "reason": "PlanNoLongerFits",
                              "message": "the kept plan ... re-planned: ..."}]}
    note = kept_plan_note(forced)
    assert note is not None and note.reason == "PlanNoLongerFits" and "re-planned" in note.message
    planned = {"conditions": [{"type": "ParallelismPlanned", "status": "True", "reason": "Planned", "message": "x"}]}
    assert kept_plan_note(planned) is None and kept_plan_note({}) is None


def test_rendering_adds_the_pin_and_the_kv_flag_and_removing_them_takes_them_out():
    from dataclasses import replace

    v = vd({}, {"kvCacheDtype": "fp8"}, dtype="bfloat16")
    plan = plan_for(v, nodes(H100, 2))
    pod = render_deployment(v, plan)["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {GPU_PRODUCT_LABEL: H100_PRODUCT}
    assert "--kv-cache-dtype=fp8" in pod["containers"][0]["args"]
    bare_v = vd({}, {}, dtype="bfloat16")
    bare = render_deployment(bare_v, replace(plan, gpu_product=None))["spec"]["template"]["spec"]
    assert "nodeSelector" not in bare
    assert not [a for a in bare["containers"][0]["args"] if a.startswith("--kv-cache-dtype")]
