"""The malformed corpus against the operator's own code, without a cluster.

The cluster test shows what a user sees; this one pins down the operator's half of it, and
checks that the operator would refuse every case cleanly even if the API server had not
(an older CRD, validation bypassed): InvalidSpec or PlanFailure, never another exception.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import pytest

from scibox_operator.api.spec import InvalidSpec, parse
from scibox_operator.planning.serving_plan import DEFAULT_VLLM_IMAGE, GpuNode, PlanFailure, decide_serving_plan
from scibox_operator.reconcile.desired import Observed, desired
from scibox_operator.reconcile.policy import AdminPolicy, policy_violation
from scibox_operator.reconcile.status import CacheState
from scibox_operator.runtime.hub import DEFAULT_ENDPOINT
from tests.fixtures.tiny_model import CONFIG as TINY_CONFIG

from .corpus import load_cases

CASES = load_cases()
H100_NODE = GpuNode("gpu-node-0", (("nvidia.com/gpu.memory", "81559"),
                                   ("nvidia.com/gpu.product", "NVIDIA-H100-80GB-HBM3")), 8)
HUB_REASONS = {"ModelNotFound", "Unauthorized", "HubUnavailable", "HubUnreachable"}


def _param(case):
    marks = [pytest.mark.xfail(strict=True, reason=case.gap)] if case.gap and case.gap_in == "everywhere" else []
    return pytest.param(case, id=case.id, marks=marks)


@dataclass(frozen=True)
class PolicyRefusal:
    """What the reconcile turns a policy violation into: Ready=False with this reason."""

    reason: str
    message: str


def case_policy(case) -> AdminPolicy:
    """The operator's default policy, with what the case sets on top."""
    options = dict(default_hub_endpoint=DEFAULT_ENDPOINT, default_image=DEFAULT_VLLM_IMAGE,
                   allowed_hub_endpoints=None, image_prefixes=[], forbid_trust_remote_code=False)
    options.update(case.policy)
    return AdminPolicy.build(**options)


def run_operator_path(case):
    """The reconcile's order: parse, the administrator's policy (before any Secret, hub request
    or child), the plan, desired()."""
    body = case.body("corpus")
    body["metadata"].update(uid="00000000-corpus", generation=1)
    try:
        vd = parse(copy.deepcopy(body))
        violation = policy_violation(vd, case_policy(case))
        if violation is not None:
            return PolicyRefusal(*violation)
        plan = decide_serving_plan(vd, config=TINY_CONFIG, safetensors_index=None, nodes=[H100_NODE],
                                   cache_shared=False)
    except (InvalidSpec, PlanFailure) as exc:
        return exc
    # Then desired(), which refuses what only the children show (a cache mounted by more pods
    # than its access mode allows).
    want = desired(vd, plan, Observed(users=(vd,), cache=CacheState(True, reason="Downloaded"),
                                      service_monitor_crd=True, leader_worker_set_crd=True))
    return PolicyRefusal(want.failure.reason, want.failure.message) if want.failure else None


def test_the_corpus_is_big_and_varied():
    assert len(CASES) >= 30
    assert len({c.id for c in CASES}) == len(CASES) and len({c.name for c in CASES}) == len(CASES)
    ids = " ".join(c.id for c in CASES)
    for topic in ("negative", "huge", "gpu", "tp-not-dividing", "no-model", "name", "extra-", "env-", "oversized"):
        assert topic in ids, f"no case about {topic}"
    assert sum(1 for c in CASES if c.ready_false) >= 10, "cases the operator itself must catch"
    policy_reasons = {c.ready_false for c in CASES}
    assert {"EndpointNotAllowed", "CodeLoadingEnvForbidden", "ImageNotAllowed"} <= policy_reasons


def test_policy_cases_are_accepted_without_their_policy():
    """A case refused only under its policy must pass under the defaults: so the refusal comes
    from the policy, not from something else wrong with the spec."""
    for case in CASES:
        if case.policy:
            plain = copy.copy(case)
            object.__setattr__(plain, "policy", {})
            assert run_operator_path(plain) is None, case.id


@pytest.mark.parametrize("case", [_param(c) for c in CASES
                                  if c.ready_false and c.ready_false not in HUB_REASONS and not c.child_refused])
def test_the_operator_refuses_what_the_api_server_admits(case):
    """Cases the CRD lets through end as InvalidSpec or a plan failure with the expected reason."""
    result = run_operator_path(case)
    assert result is not None, f"{case.id}: the operator accepted it"
    reason = "InvalidSpec" if isinstance(result, InvalidSpec) else result.reason
    assert reason == case.ready_false, f"{case.id}: {reason}: {result.message}"
    assert case.message is None or case.message in result.message, result.message


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id) for c in CASES if c.rejected])
def test_cases_the_api_server_refuses_never_crash_the_operator_either(case):
    """Defence in depth: with the CRD's validation out of the way, no exception but the two
    the reconcile loop turns into a status."""
    run_operator_path(case)
