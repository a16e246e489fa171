"""SciBox vLLM operator: reconciles VLLMDeployment resources into vLLM model servers.

Layers (import contracts in pyproject.toml): api, planning, render, engine are pure; reconcile
composes them with runtime (API client, store, queue) and readiness (the HTTP probe); handlers
is the kopf wiring, cli the entry point.
"""
