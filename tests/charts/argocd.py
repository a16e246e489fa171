"""Run manifests/argocd/health.lua on an object as Argo CD would.

Two runtimes: Debian's Lua 5.1 (`lua5.1`, through manifests/argocd/run_health.lua) and
gopher-lua itself, the interpreter inside Argo CD, through manifests/argocd/gopher (a Go program
mirroring Argo CD's util/lua: libraries opened, `obj` decoding, health-code check), built once
with the Go toolchain from the Go module proxy. Both run the script in Argo CD's default sandbox
(no string library) or with open libraries (argocd-cm useOpenLibs)."""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import subprocess
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
ARGOCD = ROOT / "manifests" / "argocd"
HEALTH = ARGOCD / "health.lua"
HARNESS = ARGOCD / "run_health.lua"
GOPHER = ARGOCD / "gopher"
LUA_CANDIDATES = ("lua5.1", "luajit")
CACHE = Path(os.environ.get("SCIBOX_CACHE", Path.home() / ".cache" / "scibox")) / "argocd-health"


def lua_binary() -> str | None:
    for name in LUA_CANDIDATES:
        path = shutil.which(name)
        if path:
            return path
    return None


def go_binary() -> str | None:
    return shutil.which("go") or (str(Path("/usr/local/go/bin/go")) if Path("/usr/local/go/bin/go").is_file() else None)


@lru_cache(maxsize=1)
def gopher_binary() -> str:
    """Build manifests/argocd/gopher once per source version (cached under ~/.cache/scibox)."""
    go = go_binary()
    if go is None:
        raise RuntimeError("no Go toolchain")
    digest = hashlib.sha256(b"".join((GOPHER / f).read_bytes() for f in ("go.mod", "go.sum", "main.go"))).hexdigest()[:16]
    out = CACHE / digest / "argocd-health"
    if not out.is_file():
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(f".tmp{os.getpid()}")
        proc = subprocess.run([go, "build", "-mod=readonly", "-o", str(tmp), "."], cwd=GOPHER, capture_output=True,
                              text=True, timeout=600, env={**os.environ, "CGO_ENABLED": "0", "GOFLAGS": "-buildvcs=false"})
        if proc.returncode != 0:
            raise RuntimeError(f"go build of {GOPHER} failed:\n{proc.stderr}")
        tmp.replace(out)
    return str(out)


def _lua_string(s: str) -> str:
    out = ['"']
    for ch in s:
        code = ord(ch)
        if ch in '"\\':
            out.append("\\" + ch)
        elif 32 <= code < 127:
            out.append(ch)
        else:  # every other byte as a decimal escape, which Lua 5.1 understands
            out.extend(f"\\{b}" for b in ch.encode())
    out.append('"')
    return "".join(out)


def to_lua(value: Any) -> str:
    """A Lua literal for a JSON-like value, as Argo CD hands objects to Lua: maps are tables
    with string keys, lists are 1-based arrays, null is nil."""
    if value is None:
        return "nil"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"not representable in Lua source: {value}")
        return repr(value)
    if isinstance(value, str):
        return _lua_string(value)
    if isinstance(value, (list, tuple)):
        return "{" + ", ".join(to_lua(v) for v in value) + "}"
    if isinstance(value, dict):
        return "{" + ", ".join(f"[{_lua_string(str(k))}] = {to_lua(v)}" for k, v in value.items()
                               if v is not None) + "}"
    raise TypeError(f"cannot convert {type(value).__name__} to Lua")


def health(obj: dict[str, Any], *, script: Path = HEALTH, runtime: str = "lua5.1",
           open_libs: bool = True) -> tuple[str, str]:
    """(status, message) that Argo CD would show for `obj`. Raises RuntimeError when the script fails."""
    flags = ["--open-libs"] if open_libs else []
    with tempfile.TemporaryDirectory() as tmp:
        if runtime == "lua5.1":
            lua = lua_binary()
            if lua is None:
                raise RuntimeError("no Lua interpreter: apt-get install lua5.1")
            data = Path(tmp) / "obj.lua"
            data.write_text("return " + to_lua(obj) + "\n")
            argv = [lua, str(HARNESS), *flags, str(script), str(data)]
        elif runtime == "gopher":
            data = Path(tmp) / "obj.json"
            data.write_text(json.dumps(obj))
            argv = [gopher_binary(), *["-open-libs" for _ in flags], str(script), str(data)]
        else:
            raise ValueError(f"unknown runtime {runtime!r}")
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    if proc.returncode != 0:
        raise RuntimeError(f"health.lua failed ({proc.returncode}): {proc.stderr.strip()}")
    if runtime == "gopher":
        out = json.loads(proc.stdout)
        return out["status"], out["message"]
    status, _, message = proc.stdout.rstrip("\n").partition("\t")
    return status, message
