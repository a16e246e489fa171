"""Shared fixtures. Each real dependency lives in its own plugin module under tests/fixtures/."""

pytest_plugins = [
    "tests.fixtures.cluster",
    "tests.fixtures.vllm",
    "tests.fixtures.hub",
    "tests.fixtures.operator",
    "tests.fixtures.prometheus",
    "tests.fixtures.lws",
]
