"""Run manifests/argocd/health.lua on an object with a real Lua 5.1 interpreter (Argo CD runs
its health checks on gopher-lua, which follows Lua 5.1)."""

from __future__ import annotations

import math
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
ARGOCD = ROOT / "manifests" / "argocd"
HEALTH = ARGOCD / "health.lua"
HARNESS = ARGOCD / "run_health.lua"
LUA_CANDIDATES = ("lua5.1", "luajit", "lua")


def lua_binary() -> str | None:
    for name in LUA_CANDIDATES:
        path = shutil.which(name)
        if path:
            return path
    return None


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


def health(obj: dict[str, Any], *, script: Path = HEALTH) -> tuple[str, str]:
    """(status, message) that Argo CD would show for `obj`."""
    lua = lua_binary()
    if lua is None:
        raise RuntimeError("no Lua interpreter: apt-get install lua5.1")
    with tempfile.NamedTemporaryFile("w", suffix=".lua") as f:
        f.write("return " + to_lua(obj) + "\n")
        f.flush()
        proc = subprocess.run([lua, str(HARNESS), str(script), f.name], capture_output=True, text=True, timeout=30)
    if proc.returncode != 0:
        raise RuntimeError(f"health.lua failed ({proc.returncode}): {proc.stderr.strip()}")
    status, _, message = proc.stdout.rstrip("\n").partition("\t")
    return status, message
