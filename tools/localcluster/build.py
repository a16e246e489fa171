"""Compile the local cluster's binaries (and the test tools) from the Go module proxy, cached.

Each upstream tool is built in a small wrapper Go module of its own under the cache directory,
so `go build` can reuse the module and build caches across runs. The repository's own small Go
programs (`tools/*/`, e.g. the kind config checker) are built from their directory, keyed by a
hash of their sources. A binary that already exists for its key is never rebuilt.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from hashlib import sha256
from pathlib import Path

from . import versions


def cache_dir() -> Path:
    root = os.environ.get("SCIBOX_CLUSTER_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "scibox-cluster"
    )
    return Path(root)


@dataclass(frozen=True)
class GoTool:
    name: str  # binary names produced (first one is the cache key's name)
    binaries: tuple[str, ...]
    module: str
    version: str
    packages: tuple[str, ...]  # one main package per binary, same order
    # -X settings for the linker; part of the cache key, so changing them rebuilds.
    stamps: tuple[str, ...] = ()
    stamp_revision: str = ""
    # Compile every package in ONE `go build` (shared compilation of a large common module
    # graph); the binaries are then named after their packages' last path element.
    one_build: bool = False
    # Copy the module's own non-local `replace`/`exclude` lines into the wrapper module.
    restate_replaces: bool = False

    @property
    def bin_dir(self) -> Path:
        suffix = f"-{self.stamp_revision}" if self.stamp_revision else ""
        return cache_dir() / "bin" / f"{self.name}-{self.version}{suffix}"

    @property
    def ldflags(self) -> str:
        return " ".join(["-s", "-w", *(f"-X {stamp}" for stamp in self.stamps)])

    def built(self) -> bool:
        return all((self.bin_dir / b).is_file() for b in self.binaries)


KUBERNETES = GoTool(
    name="kubernetes",
    binaries=("kube-apiserver", "kube-controller-manager", "kube-scheduler"),
    module="k8s.io/kubernetes",
    version=versions.KUBERNETES,
    packages=(
        "k8s.io/kubernetes/cmd/kube-apiserver",
        "k8s.io/kubernetes/cmd/kube-controller-manager",
        "k8s.io/kubernetes/cmd/kube-scheduler",
    ),
    # What Kubernetes' own release build sets (hack/lib/version.sh): without it the apiserver
    # reports v0.0.0-master and Helm cannot check a chart's kubeVersion against it.
    stamps=tuple(f"k8s.io/component-base/version.{key}={value}" for key, value in (
        ("gitVersion", versions.KUBERNETES),
        ("gitMajor", versions.KUBERNETES[1:].split(".")[0]),
        ("gitMinor", versions.KUBERNETES.split(".")[1]),
        ("gitTreeState", "clean"),
    )),
    stamp_revision="stamped",
)
ETCD = GoTool("etcd", ("etcd",), "go.etcd.io/etcd/server/v3", versions.ETCD, ("go.etcd.io/etcd/server/v3",))
KWOK = GoTool("kwok", ("kwok",), "sigs.k8s.io/kwok", versions.KWOK, ("sigs.k8s.io/kwok/cmd/kwok",))
HELM = GoTool("helm", ("helm",), "helm.sh/helm/v3", versions.HELM, ("helm.sh/helm/v3/cmd/helm",))
# The LeaderWorkerSet controller-manager; its own go.mod (k8s.io v0.33, controller-runtime
# v0.21) resolves as is. Its main package is the module's cmd/ directory.
LWS = GoTool("lws", ("lws-controller-manager",), "sigs.k8s.io/lws", versions.LWS, ("sigs.k8s.io/lws/cmd",))
# The GitHub Actions workflow linter (tests/release). Built as a dependency, actionlint cannot
# read its own version from the build info, hence the stamp.
ACTIONLINT = GoTool("actionlint", ("actionlint",), "github.com/rhysd/actionlint", versions.ACTIONLINT,
                    ("github.com/rhysd/actionlint/cmd/actionlint",),
                    stamps=(f"github.com/rhysd/actionlint.version={versions.ACTIONLINT}",))

# KEDA's operator (all scalers, so its module graph is large) and its metrics adapter (serves
# external.metrics.k8s.io, asks the operator over gRPC). Built together in one invocation.
KEDA = GoTool("keda", ("operator", "adapter"), "github.com/kedacore/keda/v2", versions.KEDA,
              ("github.com/kedacore/keda/v2/cmd/operator", "github.com/kedacore/keda/v2/cmd/adapter"),
              one_build=True, restate_replaces=True)

REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class RepoGoTool:
    """A Go program kept in this repository (its own go.mod and go.sum), built in place.

    Its cache key is a hash of its sources, so editing main.go or bumping a requirement
    rebuilds it, and nothing else does. `-mod=readonly`: a build never rewrites go.sum."""

    name: str
    binaries: tuple[str, ...]
    source: str  # directory relative to the repository root
    packages: tuple[str, ...] = (".",)

    @property
    def source_dir(self) -> Path:
        return REPO / self.source

    @property
    def version(self) -> str:
        digest = sha256()
        for path in sorted(self.source_dir.rglob("*")):
            if path.is_file() and (path.suffix == ".go" or path.name in ("go.mod", "go.sum")):
                digest.update(str(path.relative_to(self.source_dir)).encode() + b"\0" + path.read_bytes())
        return digest.hexdigest()[:12]

    @property
    def bin_dir(self) -> Path:
        return cache_dir() / "bin" / f"{self.name}-{self.version}"

    @property
    def ldflags(self) -> str:
        return "-s -w"

    def built(self) -> bool:
        return all((self.bin_dir / b).is_file() for b in self.binaries)


# Loads a kind cluster config with kind's own v1alpha4 API (docs/kind/cluster.yaml's test).
KINDCHECK = RepoGoTool("kindcheck", ("kindcheck",), "tools/kindcheck")

ALL_TOOLS = (ETCD, KWOK, HELM, KUBERNETES, LWS, ACTIONLINT, KINDCHECK, KEDA)
# Built only when named (or when a test asks for a binary): KEDA's module graph (every cloud's
# SDK for its scalers) takes the longest of all, and only the autoscaling e2e runs it, so
# scripts/test.sh builds it in the background beside the suite instead of before it.
DEFERRED_TOOLS = (KEDA,)


def log(msg: str) -> None:
    print(f"[cluster build {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _go(args: list[str], cwd: Path) -> str:
    env = dict(os.environ, GOFLAGS="-mod=mod", CGO_ENABLED="0", GOTOOLCHAIN="local")
    proc = subprocess.run(["go", *args], cwd=cwd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"go {' '.join(args)} failed in {cwd}:\n{proc.stdout}\n{proc.stderr}")
    return proc.stdout


def module_dir(module: str, version: str, cwd: Path | None = None) -> Path:
    """A module's source in the Go module cache, downloaded from the proxy if absent (outside
    any module `go mod download` needs only the proxy, hence the temporary directory)."""
    if cwd is None:
        with tempfile.TemporaryDirectory() as tmp:
            return module_dir(module, version, Path(tmp))
    out = _go(["mod", "download", "-json", f"{module}@{version}"], cwd)
    match = re.search(r'"Dir":\s*"([^"]+)"', out)
    if not match:
        raise RuntimeError(f"go mod download gave no Dir for {module}@{version}: {out}")
    return Path(match.group(1))


def staging_replaces(kubernetes_go_mod: str, staging_version: str) -> list[str]:
    """k8s.io/kubernetes replaces its staging modules with ./staging paths, which only work
    inside its own repository; a module depending on it must name the published versions."""
    modules = re.findall(r"^\s*(k8s\.io/[\w.-]+)\s+=>\s+\./staging/", kubernetes_go_mod, re.M)
    return [f"replace {m} => {m} {staging_version}" for m in sorted(set(modules))]


def restated_directives(go_mod: str) -> list[str]:
    """A module's single-line `replace` (to another module, not a local path) and `exclude`
    directives: they apply only in the main module, so a wrapper must say them again."""
    lines = []
    for line in go_mod.splitlines():
        line = line.split("//")[0].strip()
        if line.startswith("exclude ") or (line.startswith("replace ") and "=> ." not in line):
            lines.append(line)
    return lines


def _write_wrapper(tool: GoTool, workdir: Path) -> None:
    workdir.mkdir(parents=True, exist_ok=True)
    lines = [f"module scibox.local/build/{tool.name}", "", "go 1.25.0", "",
             f"require {tool.module} {tool.version}", ""]
    if tool is KUBERNETES:
        (workdir / "go.mod").write_text("\n".join(lines))
        src = module_dir(tool.module, tool.version, workdir)
        lines += staging_replaces((src / "go.mod").read_text(), versions.KUBERNETES_STAGING)
    elif tool.restate_replaces:
        (workdir / "go.mod").write_text("\n".join(lines))
        lines += restated_directives((module_dir(tool.module, tool.version, workdir) / "go.mod").read_text())
    (workdir / "go.mod").write_text("\n".join(lines) + "\n")
    # A blank-import file keeps `go mod tidy` from dropping the requirement.
    imports = "\n".join(f'\t_ "{p}"' for p in tool.packages)
    (workdir / "tools.go").write_text(f"//go:build tools\n\npackage tools\n\nimport (\n{imports}\n)\n")


def build_tool(tool: GoTool | RepoGoTool) -> Path:
    if tool.built():
        log(f"{tool.name} {tool.version}: cached in {tool.bin_dir}")
        return tool.bin_dir
    # One build per tool at a time: a second caller (a test session starting while
    # bootstrap.sh builds) waits for the first and then finds the binaries cached.
    lock_path = cache_dir() / "src" / f".{tool.name}-{tool.version}.lock"
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if tool.built():
            return tool.bin_dir
        return _build_locked(tool)


def _build_locked(tool: GoTool | RepoGoTool) -> Path:
    started = time.monotonic()
    if isinstance(tool, RepoGoTool):
        workdir, mod_flags = tool.source_dir, ["-mod=readonly"]
        log(f"{tool.name} {tool.version}: building {tool.source} (its go.sum pins every module)")
    else:
        workdir, mod_flags = cache_dir() / "src" / f"{tool.name}-{tool.version}", []
        log(f"{tool.name} {tool.version}: resolving modules in {workdir}")
        _write_wrapper(tool, workdir)
        _go(["mod", "tidy", "-e"], workdir)
    tmp_out = tool.bin_dir.with_name(tool.bin_dir.name + ".partial")
    shutil.rmtree(tmp_out, ignore_errors=True)
    tmp_out.mkdir(parents=True)
    if isinstance(tool, GoTool) and tool.one_build:
        log(f"{tool.name}: compiling {', '.join(tool.binaries)} in one go build")
        _go(["build", *mod_flags, "-trimpath", f"-ldflags={tool.ldflags}", "-o", str(tmp_out) + "/",
             *tool.packages], workdir)
    else:
        for binary, package in zip(tool.binaries, tool.packages, strict=True):
            log(f"{tool.name}: compiling {binary} (minutes on 2 cores for Kubernetes)")
            t0 = time.monotonic()
            _go(["build", *mod_flags, "-trimpath", f"-ldflags={tool.ldflags}", "-o", str(tmp_out / binary),
                 package], workdir)
            log(f"{tool.name}: {binary} done in {time.monotonic() - t0:.0f}s")
    shutil.rmtree(tool.bin_dir, ignore_errors=True)
    tmp_out.rename(tool.bin_dir)
    log(f"{tool.name} {tool.version}: built in {time.monotonic() - started:.0f}s")
    return tool.bin_dir


def build_all(only: list[str] | None = None) -> dict[str, Path]:
    paths = {}
    for tool in ALL_TOOLS:
        if only and tool.name not in only or not only and tool in DEFERRED_TOOLS:
            continue
        paths[tool.name] = build_tool(tool)
    return paths


def binary(name: str) -> Path:
    for tool in ALL_TOOLS:
        if name in tool.binaries:
            path = tool.bin_dir / name
            if not path.is_file():
                build_tool(tool)
            return path
    raise KeyError(name)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("tools", nargs="*", help="subset of: " + ", ".join(t.name for t in ALL_TOOLS)
                        + " (default: all but " + ", ".join(t.name for t in DEFERRED_TOOLS) + ")")
    args = parser.parse_args(argv)
    started = time.monotonic()
    for name, path in build_all(args.tools or None).items():
        print(f"{name}\t{path}")
    log(f"all done in {time.monotonic() - started:.0f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
