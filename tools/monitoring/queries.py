"""The PromQL the dashboard and the alerts run, made runnable outside Grafana.

Grafana fills in `$namespace`, `${deployment}`, `$__rate_interval` ... before it sends a query;
`substitute` does the same with given values, so a plain Prometheus can evaluate every panel.
Used by tests/monitoring and tools/render_dashboard.py.
"""

from __future__ import annotations

import json
import math
import re
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "charts" / "scibox-vllm-operator" / "files" / "dashboard.json"
ALERTS = ROOT / "charts" / "scibox-vllm-operator" / "files" / "alerts.yaml"

# `$name` or `${name}` (Grafana's forms). `$1` in label_replace is PromQL's own and never matches.
_VARIABLE = re.compile(r"\$\{(\w+)\}|\$([A-Za-z_]\w*)")
_LEGEND_LABEL = re.compile(r"\{\{\s*(\w+)\s*\}\}")


class UnresolvedVariable(ValueError):
    pass


def substitute(expr: str, values: Mapping[str, str]) -> str:
    """`expr` with every Grafana variable replaced; unknown variables are an error."""
    missing: list[str] = []

    def replace(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        if name not in values:
            missing.append(name)
            return match.group(0)
        return values[name]

    out = _VARIABLE.sub(replace, expr)
    if missing:
        raise UnresolvedVariable(f"no value for {sorted(set(missing))} in {expr!r}")
    return out


def regex_value(values: Iterable[str]) -> str:
    """A multi-value variable as Grafana passes it to a `=~` matcher."""
    items = sorted(set(values))
    return items[0] if len(items) == 1 else "(" + "|".join(re.escape(v) for v in items) + ")"


@dataclass(frozen=True)
class PanelQuery:
    panel: str
    ref_id: str
    expr: str
    legend: str
    unit: str
    row: str


def load_dashboard(path: Path = DASHBOARD) -> dict[str, Any]:
    return json.loads(path.read_text())


def panel_queries(dashboard: Mapping[str, Any]) -> list[PanelQuery]:
    """Every query target of every panel, in dashboard order, with the row it sits under."""
    out: list[PanelQuery] = []
    row = ""
    for panel in dashboard.get("panels") or []:
        if panel.get("type") == "row":
            row = panel.get("title", "")
            nested = panel.get("panels") or []  # a collapsed row keeps its panels inside
        else:
            nested = [panel]
        for p in nested:
            unit = ((p.get("fieldConfig") or {}).get("defaults") or {}).get("unit", "short")
            for target in p.get("targets") or []:
                out.append(PanelQuery(p.get("title", ""), target.get("refId", ""), target["expr"],
                                      target.get("legendFormat", ""), unit, row))
    return out


def variable_queries(dashboard: Mapping[str, Any]) -> dict[str, tuple[str, str]]:
    """name -> (series selector, label) of each `label_values(selector, label)` variable."""
    out: dict[str, tuple[str, str]] = {}
    for var in (dashboard.get("templating") or {}).get("list") or []:
        if var.get("type") != "query":
            continue
        query = var["query"]["query"] if isinstance(var.get("query"), dict) else var.get("query", "")
        match = re.fullmatch(r"\s*label_values\((.*),\s*(\w+)\)\s*", query)
        if not match:
            raise ValueError(f"variable {var.get('name')}: unsupported query {query!r}")
        out[var["name"]] = (match.group(1), match.group(2))
    return out


@dataclass(frozen=True)
class AlertRule:
    group: str
    name: str
    expr: str
    for_: str
    severity: str


def load_alerts(path: Path = ALERTS) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())


def alert_rules(doc: Mapping[str, Any]) -> list[AlertRule]:
    out = []
    for group in doc.get("groups") or []:
        for rule in group.get("rules") or []:
            if "alert" in rule:
                out.append(AlertRule(group["name"], rule["alert"], rule["expr"].strip(), str(rule.get("for", "0s")),
                                     str((rule.get("labels") or {}).get("severity", ""))))
    return out


def format_legend(legend: str, labels: Mapping[str, str]) -> str:
    """Grafana's legendFormat: `{{label}}` -> the series' value of that label."""
    text = _LEGEND_LABEL.sub(lambda m: labels.get(m.group(1), ""), legend).strip()
    return text or "{" + ", ".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}"


def finite_values(result: Iterable[Mapping[str, Any]]) -> list[float]:
    """The finite sample values of an instant-query vector (NaN: e.g. a quantile of no requests)."""
    values = []
    for sample in result:
        value = float(sample["value"][1])
        if math.isfinite(value):
            values.append(value)
    return values


class PrometheusClient:
    """Just enough of the HTTP API for scripts (tests use tests/fixtures/prometheus.py)."""

    def __init__(self, url: str, timeout: float = 30):
        self.url = url.rstrip("/")
        self.timeout = timeout

    def _get(self, path: str, params: Mapping[str, Any]) -> Any:
        url = f"{self.url}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        try:
            with urllib.request.urlopen(url, timeout=self.timeout) as resp:
                body = json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            body = json.loads(exc.read() or b"{}")
        if body.get("status") != "success":
            raise RuntimeError(f"{body.get('errorType')}: {body.get('error')} (query: {params.get('query')})")
        return body["data"]

    def query(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        params: dict[str, Any] = {"query": expr}
        if at is not None:
            params["time"] = f"{at:.3f}"
        return self._get("query", params)["result"]

    def query_range(self, expr: str, start: float, end: float, step: float) -> list[dict[str, Any]]:
        return self._get("query_range", {"query": expr, "start": f"{start:.3f}", "end": f"{end:.3f}",
                                         "step": f"{step:g}"})["result"]
