"""GPU lookup by name and by GPU Feature Discovery node labels."""

from __future__ import annotations

import pytest

from scibox_operator.planning import GPU_TABLE, PlanError, gpu_from_node_labels, lookup_gpu
from scibox_operator.planning.gpus import GIB


@pytest.mark.parametrize("name,expected", [
    ("H100", "H100-80GB"), ("h100-80gb", "H100-80GB"), ("NVIDIA-H100-80GB-HBM3", "H100-80GB"),
    ("NVIDIA H100 80GB HBM3", "H100-80GB"), ("a100-80gb", "A100-80GB"), ("A100-40GB", "A100-40GB"),
    ("NVIDIA-A100-SXM4-80GB", "A100-80GB"), ("NVIDIA-A100-PCIE-40GB", "A100-40GB"),
    ("NVIDIA-A10G", "A10G"), ("l4", "L4"), ("NVIDIA-L40S", "L40S"), ("NVIDIA-H200", "H200"),
    ("B200", "B200"), ("NVIDIA-GeForce-RTX-4090", "RTX-4090"), ("rtx4090", "RTX-4090"),
    ("Tesla-T4", "T4"), ("NVIDIA-H100-NVL", "H100-NVL"),
])
def test_lookup_by_short_name_or_product(name, expected):
    assert lookup_gpu(name).name == expected


@pytest.mark.parametrize("name", ["", "   ", "H1000", "TPU-v5e", "A100"])
def test_unknown_or_ambiguous_names_are_refused(name):
    with pytest.raises(PlanError) as error:
        lookup_gpu(name)
    assert error.value.reason == "UnknownGpu"


def test_a100_alone_is_called_ambiguous():
    with pytest.raises(PlanError, match="A100-40GB or A100-80GB"):
        lookup_gpu("a100")


def test_table_is_consistent():
    names = [gpu.name for gpu in GPU_TABLE]
    assert len(names) == len(set(names))
    for gpu in GPU_TABLE:
        assert lookup_gpu(gpu.name) is gpu
        for product in gpu.products:
            assert lookup_gpu(product) is gpu
        # the driver keeps a little; torch sees slightly less than nvidia-smi
        assert 0.95 * gpu.memory_bytes < gpu.cuda_total_bytes < gpu.memory_bytes


def test_h100_usable_memory_is_at_most_what_torch_reports():
    # vLLM on an H100 80GB HBM3 logs 79.18 GiB total; we must not assume more.
    assert lookup_gpu("H100").cuda_total_bytes <= 79.18 * GIB


def test_gfd_labels_give_the_gpu():
    labels = {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3", "nvidia.com/gpu.memory": "81559",
              "nvidia.com/gpu.count": "8"}
    gpu = gpu_from_node_labels(labels)
    assert gpu.name == "H100-80GB" and gpu.memory_mib == 81559


def test_gfd_shared_and_mig_suffixes_are_understood():
    shared = gpu_from_node_labels({"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB-SHARED"})
    assert shared.name == "A100-80GB"
    mig = gpu_from_node_labels({"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-40GB-MIG-3g.20gb",
                                "nvidia.com/gpu.memory": "19968"})
    assert mig.name == "A100-40GB" and mig.memory_mib == 19968   # the slice, from its label


def test_unknown_product_with_memory_label_is_still_plannable():
    gpu = gpu_from_node_labels({"nvidia.com/gpu.product": "NVIDIA-Future-GPU",
                                "nvidia.com/gpu.memory": "65536",
                                "nvidia.com/gpu.compute.major": "9", "nvidia.com/gpu.compute.minor": "0"})
    assert gpu.name == "NVIDIA-Future-GPU" and gpu.memory_mib == 65536
    assert gpu.compute_capability == (9, 0) and gpu.fp8


@pytest.mark.parametrize("labels", [
    {}, {"kubernetes.io/hostname": "node-1"}, {"nvidia.com/gpu.product": "NVIDIA-Mystery"},
    {"nvidia.com/gpu.product": "NVIDIA-Mystery", "nvidia.com/gpu.memory": "lots"},
    {"nvidia.com/gpu.memory": "-5"},
])
def test_nodes_without_usable_gpu_labels_give_none(labels):
    assert gpu_from_node_labels(labels) is None


def test_old_gpus_lack_bf16_and_fp8():
    assert not lookup_gpu("T4").bf16 and not lookup_gpu("V100").fp8
    assert lookup_gpu("A100-80GB").bf16 and lookup_gpu("H100").fp8
