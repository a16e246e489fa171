"""The sentences of a plan: why a layout was chosen, and why none fits (as a PlanError)."""

from __future__ import annotations

from .errors import PlanError
from .facts import ModelFacts
from .gpus import GIB, GpuType
from .memory import LayoutFit
from .plan import Plan
from .settings import Settings
from .weights import weight_bytes_per_stage


def _gpus(count: int, gpu: GpuType) -> str:
    return f"{count} {gpu.name} GPU{'' if count == 1 else 's'}"


def _gib(value: float) -> str:
    return f"{value / GIB:.1f} GiB"


def _count(params: int) -> str:
    if params >= 10**9:
        return f"{params / 10**9:.1f}B"
    return f"{params / 10**6:.0f}M"


def _model_summary(model: ModelFacts, s: Settings, total_bytes: int) -> str:
    storage = s.scheme.method if s.scheme else s.dtype
    return f"{model.display_name} ({_count(model.total_params)} parameters, {_gib(total_bytes)} as {storage})"


def _target(s: Settings) -> str:
    concurrency = s.required_tokens // s.max_model_len
    noun = "sequence" if concurrency == 1 else "sequences"
    return f"{s.max_model_len:,} tokens x {concurrency} {noun}"


def _shortfall(fit: LayoutFit) -> str:
    if not fit.weights_fit:
        return f"{fit.gpus} GPU{'s' if fit.gpus > 1 else ''} cannot hold the weights and runtime reserve"
    return (f"{fit.gpus} GPU{'s' if fit.gpus > 1 else ''} ({fit.describe()}) would leave only "
            f"{fit.kv_cache_tokens:,} KV-cache tokens")


def _utilization(s: Settings, gpu: GpuType) -> str:
    return f"{s.utilization:.0%}"


def plan_reason(model: ModelFacts, gpu: GpuType, fit: LayoutFit, s: Settings, previous: LayoutFit | None,
                tp_fixed: int | None, pp_fixed: int | None, total: int) -> str:
    """Why a plan is what it is; `previous` is the last smaller layout tried, `total` all weight bytes."""
    given = []
    if tp_fixed:
        given.append("tensor parallel size")
    if pp_fixed:
        given.append("pipeline parallel size")
    how = fit.describe() + (f" (the requested {' and '.join(given)})" if given else "")
    where = "at most " if fit.pipeline_parallel_size > 1 else ""
    reason = (f"{_model_summary(model, s, total)} needs {_gpus(fit.gpus, gpu)}: {how} puts {where}{_gib(fit.weight_bytes_per_gpu)} of weights "
              f"on {'any' if fit.pipeline_parallel_size > 1 else 'each'} GPU and leaves {fit.kv_cache_tokens:,} KV-cache tokens at "
              f"{_utilization(s, gpu)} memory utilization, enough for {_target(s)}")
    if previous is not None and previous.gpus < fit.gpus:
        reason += f"; {_shortfall(previous)}"
    reason += "."
    return reason


def no_fit_error(model: ModelFacts, gpu: GpuType, gpus_per_node: int, tried: list[LayoutFit], s: Settings,
                 max_nodes: int | None, needed: Plan | None) -> PlanError:
    """The PlanError when no layout of `tried` fits; `needed` is the plan a node limit above
    max_nodes would allow (found by the planner only when both sizes were free)."""
    total = sum(weight_bytes_per_stage(model, 1, 1, s.storage))
    summary = _model_summary(model, s, total)
    if not tried:
        return PlanError("ModelTooLarge", f"{summary}: no layout of {gpu.name} GPUs is allowed by the given sizes")
    # The layout with the most room per GPU tells what is missing.
    best = max(tried, key=lambda f: (f.weights_fit, f.kv_cache_tokens, -f.weight_bytes_per_gpu))
    if needed is not None:
        return PlanError(
            "TooManyNodes",
            f"{summary} needs {needed.nodes} nodes of {_gpus(gpus_per_node, gpu)} "
            f"({needed.gpus} GPUs in all); maxNodes is {max_nodes}",
        )
    if not best.weights_fit:
        return PlanError(
            "ModelTooLarge",
            f"{summary} does not fit: even {best.describe()} ({_gpus(best.gpus, gpu)}) needs "
            f"{_gib(best.weight_bytes_per_gpu + max(st.reserve_bytes for st in best.stages))} of weights "
            f"and runtime reserve per GPU, more than the {_gib(s.budget_bytes)} "
            f"{_utilization(s, gpu)} memory utilization allows",
        )
    return PlanError(
        "InsufficientKvCache",
        f"{summary}: the roomiest allowed layout, {best.describe()} ({_gpus(best.gpus, gpu)}), "
        f"leaves {best.kv_cache_tokens:,} KV-cache tokens, fewer than the {s.required_tokens:,} needed "
        f"for {_target(s)}; lower maxModelLen or the concurrency target, or allow more GPUs",
    )
