#!/usr/bin/env python3
"""Draw the dashboard's key panels as one PNG, from what a Prometheus answers for their queries.

    python tools/render_dashboard.py --prometheus http://127.0.0.1:9090 --out out/dashboard.png \\
        [--var namespace=ml --var deployment=llama] [--minutes 15] [--rate-interval 1m]

Each panel's PromQL comes from charts/scibox-vllm-operator/files/dashboard.json with the
template variables filled in (default: every value, `.*`), is run with /api/v1/query_range over
the last --minutes, and is plotted with the panel's legend format. So the PNG shows what Grafana
would show, without a Grafana. A JSON summary (series and last value per query) goes to stdout.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tools.monitoring.dashboard import key_panel_titles  # noqa: E402
from tools.monitoring.queries import (  # noqa: E402
    PanelQuery,
    PrometheusClient,
    format_legend,
    load_dashboard,
    panel_queries,
    substitute,
)

COLUMNS = 3
UNIT_LABELS = {"s": "seconds", "reqps": "requests/s", "percentunit": "%", "ops": "per second",
               "Bps": "bytes/s", "short": ""}


def parse_vars(pairs: list[str]) -> dict[str, str]:
    values: dict[str, str] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise SystemExit(f"--var wants name=value, got {pair!r}")
        values[name] = value
    return values


def render(client: PrometheusClient, out: Path, *, variables: dict[str, str], minutes: float, step: float,
           titles: list[str], end: float | None = None) -> dict[str, list[dict[str, object]]]:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt

    end = end or time.time()
    start = end - minutes * 60
    by_panel: dict[str, list[PanelQuery]] = {}
    for query in panel_queries(load_dashboard()):
        if query.panel in titles:
            by_panel.setdefault(query.panel, []).append(query)
    missing = [t for t in titles if t not in by_panel]
    if missing:
        raise SystemExit(f"no panel titled {missing} in the dashboard")

    rows = math.ceil(len(titles) / COLUMNS)
    fig, axes = plt.subplots(rows, COLUMNS, figsize=(6 * COLUMNS, 3.6 * rows), squeeze=False)
    summary: dict[str, list[dict[str, object]]] = {}
    for ax, title in zip(axes.flat, titles, strict=False):
        plotted = 0
        unit = by_panel[title][0].unit
        scale = 100.0 if unit == "percentunit" else 1.0  # Grafana shows fractions as percent
        lowest = math.inf
        for query in by_panel[title]:
            expr = substitute(query.expr, variables)
            result = client.query_range(expr, start, end, step)
            entry: dict[str, object] = {"ref": query.ref_id, "expr": expr, "series": len(result)}
            for series in result:
                points = [(float(t), float(v)) for t, v in series["values"] if math.isfinite(float(v))]
                if not points:
                    continue
                xs = [datetime.fromtimestamp(t) for t, _ in points]
                ys = [v * scale for _, v in points]
                lowest = min(lowest, *ys)
                ax.plot(xs, ys, linewidth=1.2, label=format_legend(query.legend, series["metric"]))
                entry["last"] = points[-1][1]
                plotted += 1
            summary.setdefault(title, []).append(entry)
        ax.set_title(title, fontsize=11)
        ax.set_ylabel(UNIT_LABELS.get(unit, unit), fontsize=8)
        ax.tick_params(labelsize=7)
        ax.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M:%S"))
        ax.grid(True, alpha=0.3)
        if plotted:
            if lowest >= 0:
                ax.set_ylim(bottom=0)  # rates, latencies, counts: no negative axis around a flat 0
            if unit == "percentunit":
                ax.set_ylim(top=110)  # room above 100 % for the legend
            ax.legend(fontsize=6, loc="best")
        else:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes, color="grey")
            ax.set_xticks([])
            ax.set_yticks([])
    for ax in list(axes.flat)[len(titles):]:
        ax.axis("off")
    shown = ", ".join(f"{k}={v}" for k, v in sorted(variables.items()) if not k.startswith("__"))
    fig.suptitle(f"SciBox vLLM dashboard ({shown}; {datetime.fromtimestamp(start):%H:%M:%S}"
                 f" - {datetime.fromtimestamp(end):%H:%M:%S})", fontsize=12)
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prometheus", required=True, help="base URL of the Prometheus to query")
    parser.add_argument("--out", required=True, type=Path, help="PNG file to write")
    parser.add_argument("--var", action="append", default=[], metavar="NAME=VALUE",
                        help="a dashboard variable (namespace, deployment, model); default .* (all)")
    parser.add_argument("--minutes", type=float, default=15, help="time range ending now (default 15)")
    parser.add_argument("--step", type=float, default=0, help="query step in seconds (default: range/240)")
    parser.add_argument("--rate-interval", default="1m", help="what $__rate_interval stands for (default 1m)")
    parser.add_argument("--panel", action="append", default=[], help="draw this panel (default: the key panels)")
    args = parser.parse_args(argv)

    variables = {"namespace": ".*", "deployment": ".*", "model": ".*", "datasource": "prometheus",
                 "__rate_interval": args.rate_interval, "__interval": args.rate_interval}
    variables.update(parse_vars(args.var))
    step = args.step or max(1.0, args.minutes * 60 / 240)
    summary = render(PrometheusClient(args.prometheus), args.out, variables=variables, minutes=args.minutes,
                     step=step, titles=args.panel or key_panel_titles())
    json.dump({"out": str(args.out), "panels": summary}, sys.stdout, indent=2, sort_keys=True)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
