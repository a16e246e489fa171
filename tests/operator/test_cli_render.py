"""`scibox-operator render` (GitOps previews) on the samples as they are: several documents."""

from __future__ import annotations

from pathlib import Path

import yaml

from scibox_operator.cli import main

ROOT = Path(__file__).resolve().parents[2]


def test_a_sample_with_its_secret_renders_the_vllmdeployments_children(capsys):
    assert main(["render", "-f", str(ROOT / "manifests" / "samples" / "api-key-model.yaml"), "-n", "team"]) == 0
    docs = list(yaml.safe_load_all(capsys.readouterr().out))
    kinds = sorted(d["kind"] for d in docs)
    assert kinds == ["Deployment", "Job", "PersistentVolumeClaim", "Service", "ServiceMonitor"], kinds
    assert all(d["metadata"]["namespace"] == "team" for d in docs)
    assert "change-me" not in yaml.safe_dump_all(docs), "the Secret's value is never rendered"


def test_files_without_a_vllmdeployment_or_with_bad_yaml_are_refused_with_a_message(tmp_path, capsys):
    only_secret = tmp_path / "secret.yaml"
    only_secret.write_text("apiVersion: v1\nkind: Secret\nmetadata: {name: s}\n")
    assert main(["render", "-f", str(only_secret)]) == 2
    assert "holds no VLLMDeployment" in capsys.readouterr().err
    broken = tmp_path / "broken.yaml"
    broken.write_text("kind: [unclosed\n")
    assert main(["render", "-f", str(broken)]) == 2
    assert "broken.yaml" in capsys.readouterr().err
