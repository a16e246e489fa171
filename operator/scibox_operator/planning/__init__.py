"""Parallelism planning: how many GPUs, and which tensor/pipeline split, a model needs.

Pure functions over a model's config.json and a GPU type; the CLI (`cli.py`) is the only
part that reads files. The operator calls `plan_parallelism` when a spec says `auto`.
"""

from .errors import PlanError
from .facts import LayerParams, ModelFacts
from .facts_from_config import model_facts_from_config
from .families.registry import SUPPORTED_MODEL_TYPES
from .gpus import GPU_TABLE, GpuType, gpu_from_node_labels, known_gpu_names, lookup_gpu
from .memory import LayoutFit, kv_bytes_per_token
from .numerics import QuantScheme
from .placement import place, tensor_parallel_problem, valid_tensor_parallel_sizes
from .plan import Plan
from .planner import evaluate_layout, plan_parallelism
from .settings import DEFAULT_RESERVE, MemoryReserve, vllm_default_batch

__all__ = [
    "DEFAULT_RESERVE", "GPU_TABLE", "GpuType", "LayerParams", "LayoutFit", "MemoryReserve",
    "ModelFacts", "Plan", "PlanError", "QuantScheme", "SUPPORTED_MODEL_TYPES", "evaluate_layout",
    "gpu_from_node_labels", "known_gpu_names", "kv_bytes_per_token", "lookup_gpu",
    "model_facts_from_config", "place", "plan_parallelism", "tensor_parallel_problem",
    "valid_tensor_parallel_sizes", "vllm_default_batch",
]
