"""GPU types the planner knows, matched from names or GPU Feature Discovery node labels.

Memory is given in MiB exactly as GPU Feature Discovery publishes it in the
`nvidia.com/gpu.memory` label (the figure `nvidia-smi` prints as "Total"), and the
product strings are GFD's `nvidia.com/gpu.product` values: NVML's product name with
spaces turned into dashes (e.g. "NVIDIA H100 80GB HBM3" -> "NVIDIA-H100-80GB-HBM3").
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

from .errors import PlanError

MIB = 1024**2
GIB = 1024**3

PRODUCT_LABEL = "nvidia.com/gpu.product"
MEMORY_LABEL = "nvidia.com/gpu.memory"
COUNT_LABEL = "nvidia.com/gpu.count"
CC_MAJOR_LABEL = "nvidia.com/gpu.compute.major"
CC_MINOR_LABEL = "nvidia.com/gpu.compute.minor"

# The CUDA driver and context keep part of the memory nvidia-smi reports: torch's
# total_memory on an H100 80GB HBM3 is 79.18 GiB against GFD's 81559 MiB (79.65 GiB),
# i.e. ~0.47 GiB; an A100-SXM4-80GB reports ~79.15 GiB of 80 GiB, ~0.85 GiB. vLLM applies
# gpu_memory_utilization to torch's figure, so we subtract 512 MiB plus 0.5 % of the
# label, which covers both measurements (H100: 0.90 GiB, A100-80GB: 0.90 GiB).
DRIVER_RESERVE_FIXED_BYTES = 512 * MIB
DRIVER_RESERVE_FRACTION = 0.005


@dataclass(frozen=True)
class GpuType:
    """One GPU model: its memory and compute capability (which numeric formats it runs)."""

    name: str
    memory_mib: int
    compute_capability: tuple[int, int] = (8, 0)
    products: tuple[str, ...] = ()
    aliases: tuple[str, ...] = ()
    # GPUs a node of this board usually carries (HGX/DGX baseboards and the clouds' largest
    # shapes: 8): what a plan assumes when the spec names the GPU but no such node exists yet
    # (an autoscaled pool at zero). GH200 is one superchip per node.
    usual_gpus_per_node: int = 8

    @property
    def memory_bytes(self) -> int:
        return self.memory_mib * MIB

    @property
    def cuda_total_bytes(self) -> int:
        """Memory torch (and so vLLM's gpu_memory_utilization) sees as the device total."""
        reserve = DRIVER_RESERVE_FIXED_BYTES + int(self.memory_bytes * DRIVER_RESERVE_FRACTION)
        return max(0, self.memory_bytes - reserve)

    @property
    def bf16(self) -> bool:
        return self.compute_capability >= (8, 0)     # Ampere and newer

    @property
    def fp8(self) -> bool:
        # vLLM runs fp8 checkpoints natively from Ada (8.9) on, and weight-only through
        # Marlin kernels on Ampere (8.0); Turing and Volta cannot run them at all.
        return self.compute_capability >= (8, 0)

    def to_json(self) -> dict:
        return {"name": self.name, "memoryMiB": self.memory_mib,
                "computeCapability": "%d.%d" % self.compute_capability}


def _gpu(name, memory_mib, cc, products=(), aliases=(), per_node=8) -> GpuType:
    return GpuType(name, memory_mib, cc, tuple(products), tuple(aliases), per_node)


# Memory figures: the MiB totals nvidia-smi / GFD report for each board.
GPU_TABLE: tuple[GpuType, ...] = (
    _gpu("T4", 15360, (7, 5), ["Tesla-T4"], ["t4", "t4-16gb"]),
    _gpu("V100-16GB", 16384, (7, 0), ["Tesla-V100-SXM2-16GB", "Tesla-V100-PCIE-16GB"], ["v100", "v100-16gb"]),
    _gpu("V100-32GB", 32768, (7, 0), ["Tesla-V100-SXM2-32GB", "Tesla-V100-PCIE-32GB", "Tesla-V100S-PCIE-32GB"],
         ["v100-32gb"]),
    _gpu("A10G", 23028, (8, 6), ["NVIDIA-A10G"], ["a10g", "a10g-24gb"]),
    _gpu("A10", 23028, (8, 6), ["NVIDIA-A10"], ["a10", "a10-24gb"]),
    _gpu("A30", 24576, (8, 0), ["NVIDIA-A30"], ["a30", "a30-24gb"]),
    _gpu("L4", 23034, (8, 9), ["NVIDIA-L4"], ["l4", "l4-24gb"]),
    _gpu("RTX-4090", 24564, (8, 9), ["NVIDIA-GeForce-RTX-4090"], ["rtx4090", "4090", "geforce-rtx-4090"]),
    _gpu("RTX-5090", 32607, (12, 0), ["NVIDIA-GeForce-RTX-5090"], ["rtx5090", "5090", "geforce-rtx-5090"]),
    _gpu("A40", 46068, (8, 6), ["NVIDIA-A40"], ["a40", "a40-48gb"]),
    _gpu("RTX-A6000", 49140, (8, 6), ["NVIDIA-RTX-A6000"], ["rtxa6000", "a6000"]),
    _gpu("RTX-6000-Ada", 49140, (8, 9), ["NVIDIA-RTX-6000-Ada-Generation"], ["rtx6000ada", "6000ada"]),
    _gpu("L40", 46068, (8, 9), ["NVIDIA-L40"], ["l40", "l40-48gb"]),
    _gpu("L40S", 46068, (8, 9), ["NVIDIA-L40S"], ["l40s", "l40s-48gb"]),
    _gpu("A100-40GB", 40960, (8, 0), ["NVIDIA-A100-SXM4-40GB", "NVIDIA-A100-PCIE-40GB"],
         ["a100-40gb", "a100-40g", "a100-sxm4-40gb", "a100-pcie-40gb"]),
    _gpu("A100-80GB", 81920, (8, 0), ["NVIDIA-A100-SXM4-80GB", "NVIDIA-A100-80GB-PCIe"],
         ["a100-80gb", "a100-80g", "a100-sxm4-80gb", "a100-80gb-pcie"]),
    _gpu("H100-80GB", 81559, (9, 0), ["NVIDIA-H100-80GB-HBM3", "NVIDIA-H100-PCIe", "NVIDIA-H800"],
         ["h100", "h100-80gb", "h100-sxm", "h100-pcie", "h800"]),
    _gpu("H100-NVL", 95830, (9, 0), ["NVIDIA-H100-NVL"], ["h100-nvl", "h100-94gb"]),
    _gpu("H20", 97871, (9, 0), ["NVIDIA-H20"], ["h20", "h20-96gb"]),
    _gpu("GH200-96GB", 97871, (9, 0), ["NVIDIA-GH200-480GB"], ["gh200", "gh200-96gb"], per_node=1),
    _gpu("H200", 143771, (9, 0), ["NVIDIA-H200", "NVIDIA-H200-NVL"], ["h200", "h200-141gb", "h200-nvl"]),
    _gpu("B200", 183359, (10, 0), ["NVIDIA-B200"], ["b200", "b200-180gb"]),
)

# Short names that match several boards: refuse them rather than guess a memory size.
AMBIGUOUS_NAMES = {"a100": ("A100-40GB", "A100-80GB")}


def _key(name: str) -> str:
    """Normalise a product or alias: no vendor prefix, no punctuation, lower case."""
    text = name.strip().lower()
    text = re.sub(r"-shared$", "", text)            # GFD time-slicing/MPS suffix
    text = re.sub(r"-mig-.*$", "", text)             # MIG profile suffix; memory comes from its label
    text = re.sub(r"^(nvidia|tesla)[-_ ]+", "", text)
    text = re.sub(r"^(nvidia|geforce)[-_ ]+", "", text)
    text = re.sub(r"^geforce[-_ ]+", "", text)
    return re.sub(r"[^a-z0-9]", "", text)


_INDEX: dict[str, GpuType] = {}
for _g in GPU_TABLE:
    for _n in (_g.name, *_g.products, *_g.aliases):
        _INDEX.setdefault(_key(_n), _g)


def known_gpu_names() -> list[str]:
    return [g.name for g in GPU_TABLE]


def lookup_gpu(name: str) -> GpuType:
    """The GPU for a short name ("H100", "a100-80gb") or a GFD product string."""
    if not isinstance(name, str) or not name.strip():
        raise PlanError("UnknownGpu", "no GPU type was given")
    key = _key(name)
    if key in AMBIGUOUS_NAMES:
        options = " or ".join(AMBIGUOUS_NAMES[key])
        raise PlanError("UnknownGpu", f"GPU name {name!r} is ambiguous: say {options}")
    gpu = _INDEX.get(key)
    if gpu is None:
        raise PlanError(
            "UnknownGpu",
            f"unknown GPU type {name!r}; known: {', '.join(known_gpu_names())}",
        )
    return gpu


def gpu_from_node_labels(labels: dict[str, str]) -> GpuType | None:
    """The GPU a node carries, from its GPU Feature Discovery labels; None if it has none.

    A known product gives the table entry, with its memory replaced by the node's own
    `nvidia.com/gpu.memory` label when that differs (MIG slices, odd board revisions).
    An unknown product with a memory label still gives a usable GpuType named after
    the product, with the compute capability from GFD's compute labels (8.0 if absent).
    """
    if not labels:
        return None
    product = (labels.get(PRODUCT_LABEL) or "").strip()
    memory_mib = _parse_mib(labels.get(MEMORY_LABEL))
    gpu: GpuType | None = None
    if product:
        gpu = _INDEX.get(_key(product))
    if gpu is not None:
        if memory_mib and memory_mib != gpu.memory_mib:
            gpu = replace(gpu, memory_mib=memory_mib)
        return gpu
    if memory_mib:
        major = _parse_mib(labels.get(CC_MAJOR_LABEL))
        minor = _parse_int(labels.get(CC_MINOR_LABEL))
        cc = (major, minor or 0) if major else (8, 0)
        return GpuType(name=product or "unknown-gpu", memory_mib=memory_mib, compute_capability=cc,
                       products=(product,) if product else ())
    return None


def _parse_int(value: str | None) -> int | None:
    try:
        return int(str(value).strip()) if value is not None else None
    except ValueError:
        return None


def _parse_mib(value: str | None) -> int | None:
    if value is None:
        return None
    try:
        mib = int(str(value).strip())
    except ValueError:
        return None
    return mib if mib > 0 else None
