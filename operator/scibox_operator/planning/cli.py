"""`scibox-operator plan`: print the parallelism plan for a config.json and a GPU type."""

from __future__ import annotations

import argparse
import json
import os
import sys

from .errors import PlanError
from .facts_from_config import model_facts_from_config
from .gpus import lookup_gpu
from .planner import plan_parallelism


def add_plan_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "plan",
        help="choose tensor/pipeline parallel sizes for a model",
        description="Plan the smallest GPU layout that holds a model's weights and KV cache.",
    )
    _add_arguments(parser)
    parser.set_defaults(func=run_plan)
    return parser


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True,
                        help="the model's config.json, or a directory holding it")
    parser.add_argument("--safetensors-index", default=None,
                        help="model.safetensors.index.json (default: next to config.json, if there)")
    parser.add_argument("--gpu", required=True, help="GPU type: short name (H100, a100-80gb) or GFD product")
    parser.add_argument("--gpus-per-node", type=int, default=8)
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--quantization", default=None)
    parser.add_argument("--kv-cache-dtype", default="auto")
    parser.add_argument("--max-model-len", type=int, default=None)
    parser.add_argument("--gpu-memory-utilization", type=float, default=0.9)
    parser.add_argument("--tensor-parallel-size", type=int, default=None)
    parser.add_argument("--pipeline-parallel-size", type=int, default=None)
    parser.add_argument("--max-nodes", type=int, default=None)
    parser.add_argument("--concurrency-target", type=int, default=1)
    parser.add_argument("--json", action="store_true", help="print the plan as JSON")


def _read_json(path: str, what: str) -> dict:
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except OSError as error:
        raise PlanError("InvalidModelConfig", f"cannot read {what} {path}: {error.strerror}") from None
    except json.JSONDecodeError as error:
        raise PlanError("InvalidModelConfig", f"{what} {path} is not JSON: {error}") from None


def run_plan(args: argparse.Namespace) -> int:
    """Print the plan (or the reason there is none); 0 on a plan, 2 when none exists."""
    try:
        config_path = args.config
        if os.path.isdir(config_path):
            config_path = os.path.join(config_path, "config.json")
        config = _read_json(config_path, "config")
        index_path = args.safetensors_index
        if index_path is None:
            sibling = os.path.join(os.path.dirname(config_path), "model.safetensors.index.json")
            index_path = sibling if os.path.isfile(sibling) else None
        index = _read_json(index_path, "safetensors index") if index_path else None
        model = model_facts_from_config(config, index)
        plan = plan_parallelism(
            model, lookup_gpu(args.gpu), args.gpus_per_node, dtype=args.dtype,
            quantization=args.quantization, kv_cache_dtype=args.kv_cache_dtype,
            max_model_len=args.max_model_len, gpu_memory_utilization=args.gpu_memory_utilization,
            tensor_parallel_size=args.tensor_parallel_size,
            pipeline_parallel_size=args.pipeline_parallel_size, max_nodes=args.max_nodes,
            concurrency_target=args.concurrency_target,
        )
    except PlanError as error:
        if args.json:
            print(json.dumps({"error": error.reason, "message": error.message}, indent=2))
        else:
            print(f"no plan: {error.reason}: {error.message}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(plan.to_json(), indent=2))
    else:
        print(f"tensorParallelSize={plan.tensor_parallel_size} "
              f"pipelineParallelSize={plan.pipeline_parallel_size} gpus={plan.gpus} nodes={plan.nodes}")
        print(plan.reason)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scibox-operator")
    add_plan_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
