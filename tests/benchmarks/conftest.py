"""Speed comparisons run with ``pytest tests/benchmarks --benchmark-enable`` (about 25 minutes on
2 cores); under the default ``pytest`` they are skipped, so CI stays well inside its budget."""

from __future__ import annotations

import pytest


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("benchmark_enable", False):
        return
    skip = pytest.mark.skip(reason="speed benchmark: run with --benchmark-enable")
    for item in items:
        if "benchmarks" in item.path.parts:
            item.add_marker(skip)
