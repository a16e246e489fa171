"""Fixtures of tests/monitoring.

The real-Prometheus fixtures live in tests/fixtures/prometheus.py; until tests/conftest.py lists
that module in pytest_plugins they are imported here (importing a fixture into a conftest makes
it available below it; a second registration through pytest_plugins is harmless).
"""

from tests.fixtures.prometheus import prometheus_binary, prometheus_factory  # noqa: F401
