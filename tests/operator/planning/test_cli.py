"""`scibox-operator plan`: argument wiring, JSON output, errors and exit codes."""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys

import pytest

from scibox_operator.planning.cli import add_plan_parser, main, run_plan

from .conftest import CONFIG_DIR

LLAMA_8B = CONFIG_DIR / "meta-llama--Llama-3.1-8B-Instruct.json"
REQUIRED_KEYS = {"tensorParallelSize", "pipelineParallelSize", "gpus", "nodes", "weightBytesPerGpu",
                 "kvCacheTokens", "reason"}


def _run(argv, capsys):
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_json_plan(capsys):
    code, out, _ = _run(["plan", "--config", str(LLAMA_8B), "--gpu", "L4", "--gpus-per-node", "8",
                         "--max-model-len", "131072", "--json"], capsys)
    assert code == 0
    data = json.loads(out)
    assert REQUIRED_KEYS <= set(data)
    assert (data["tensorParallelSize"], data["pipelineParallelSize"], data["gpus"], data["nodes"]) == (2, 1, 2, 1)
    assert data["kvCacheTokens"] >= 131072 and data["weightBytesPerGpu"] > 7 * 2**30


def test_text_plan(capsys):
    code, out, _ = _run(["plan", "--config", str(LLAMA_8B), "--gpu", "NVIDIA-H100-80GB-HBM3",
                         "--max-model-len", "8192"], capsys)
    assert code == 0
    assert out.startswith("tensorParallelSize=1 pipelineParallelSize=1 gpus=1 nodes=1")
    assert "H100-80GB" in out


def test_config_directory_with_safetensors_index(tmp_path, capsys):
    shutil.copy(LLAMA_8B, tmp_path / "config.json")
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {"total_size": 16_060_522_496 + 2 * 10**8}, "weight_map": {}}))
    code, out, _ = _run(["plan", "--config", str(tmp_path), "--gpu", "h100", "--json",
                         "--max-model-len", "8192"], capsys)
    assert code == 0
    assert json.loads(out)["totalWeightBytes"] == pytest.approx(16_260_522_496, rel=1e-6)


def test_impossible_request_prints_reason_and_exits_2(capsys):
    code, out, _ = _run(["plan", "--config", str(LLAMA_8B), "--gpu", "L4", "--tensor-parallel-size", "3",
                         "--json"], capsys)
    assert code == 2
    data = json.loads(out)
    assert data["error"] == "TensorParallelNotDivisor" and "32" in data["message"]
    code, _, err = _run(["plan", "--config", str(LLAMA_8B), "--gpu", "Voodoo5"], capsys)
    assert code == 2 and "UnknownGpu" in err


def test_unreadable_and_non_json_configs(tmp_path, capsys):
    code, out, _ = _run(["plan", "--config", str(tmp_path / "missing.json"), "--gpu", "L4", "--json"], capsys)
    assert code == 2 and json.loads(out)["error"] == "InvalidModelConfig"
    bad = tmp_path / "config.json"
    bad.write_text("{not json")
    code, out, _ = _run(["plan", "--config", str(bad), "--gpu", "L4", "--json"], capsys)
    assert code == 2 and json.loads(out)["error"] == "InvalidModelConfig"


def test_parser_can_be_mounted_in_another_command(capsys):
    parser = argparse.ArgumentParser(prog="scibox-operator")
    sub = parser.add_subparsers(dest="command")
    add_plan_parser(sub)
    args = parser.parse_args(["plan", "--config", str(LLAMA_8B), "--gpu", "A100-80GB", "--json",
                              "--concurrency-target", "4", "--max-model-len", "32768"])
    assert args.func is run_plan
    assert run_plan(args) == 0
    assert json.loads(capsys.readouterr().out)["concurrencyTarget"] == 4


def test_module_entry_point():
    result = subprocess.run(
        [sys.executable, "-m", "scibox_operator.planning.cli", "plan", "--config", str(LLAMA_8B),
         "--gpu", "H200", "--json", "--max-model-len", "8192"],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["gpus"] == 1
