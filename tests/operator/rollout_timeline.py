"""Capacity over time during a rollout, sampled from the API server (pods Ready, old or new
template) and from the VLLMDeployment's status (the prober's readyReplicas, Progressing).
Printed as JSON lines (pytest -s) so a rollout's shape can be read after the fact."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

API = "/apis/scibox.io/v1alpha1"


def pod_ready(pod: dict) -> bool:
    return any(c.get("type") == "Ready" and c.get("status") == "True"
               for c in (pod.get("status") or {}).get("conditions") or [])


def server_pods(rest, namespace: str, name: str) -> list[dict]:
    sel = f"app.kubernetes.io/instance={name},app.kubernetes.io/component=server"
    return rest.get(f"/api/v1/namespaces/{namespace}/pods?labelSelector={sel}")["items"]


@dataclass
class Timeline:
    rest: Any
    namespace: str
    name: str
    is_new: Callable[[dict], bool]  # does this pod run the new template
    samples: list[dict] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)

    def sample(self) -> dict:
        pods = [p for p in server_pods(self.rest, self.namespace, self.name)
                if not p["metadata"].get("deletionTimestamp")]
        vd = self.rest.get(f"{API}/namespaces/{self.namespace}/vllmdeployments/{self.name}")
        status = vd.get("status") or {}
        progressing = next((c for c in status.get("conditions") or [] if c.get("type") == "Progressing"), {})
        s = {"t": round(time.monotonic() - self.started, 1),
             "ready_new": sum(1 for p in pods if pod_ready(p) and self.is_new(p)),
             "ready_old": sum(1 for p in pods if pod_ready(p) and not self.is_new(p)),
             "pods": len(pods), "prober_ready": int(status.get("readyReplicas") or 0),
             "progressing": progressing.get("reason"), "strategy": (status.get("rollout") or {}).get("strategy"),
             "old_pods": sorted(p["metadata"]["name"] for p in pods if not self.is_new(p))}
        s["ready"] = s["ready_new"] + s["ready_old"]
        self.samples.append(s)
        return s

    def run_until(self, done: Callable[[dict], bool], *, timeout: float, every: float = 0.5) -> dict:
        """Sample at least every second until `done(sample)`; fails with the timeline on timeout."""
        deadline = time.monotonic() + timeout
        while True:
            s = self.sample()
            if done(s):
                return s
            if time.monotonic() > deadline:
                self.print()
                raise AssertionError(f"{self.name}: not done after {timeout}s; last samples {self.samples[-5:]}")
            time.sleep(every)

    def print(self) -> None:
        compact = [{k: v for k, v in s.items() if k != "old_pods"} for s in self.samples]
        print(f"\nTIMELINE {self.namespace}/{self.name}: " + json.dumps(compact))
