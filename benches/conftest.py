"""After pytest-benchmark's tables, print the figure each benchmark group exists for: how many
times faster the native test is than its pure-Python (or reference library) counterpart.

In each group the test whose name contains `native` is compared with every other test; the
ratio is of the means measured in this run (the machines are shared and noisy: compare within
a run, never across runs).
"""

from __future__ import annotations

from typing import Any

import pytest


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    session = getattr(config, "_benchmarksession", None)
    benchmarks = getattr(session, "benchmarks", None) or []
    groups: dict[str, dict[str, float]] = {}
    for bench in benchmarks:
        if bench.stats is None:
            continue
        groups.setdefault(bench.group or bench.name, {})[bench.name] = bench.stats.mean
    lines = []
    for group, means in sorted(groups.items()):
        native = {name: mean for name, mean in means.items() if "native" in name}
        others = {name: mean for name, mean in means.items() if "native" not in name}
        if len(native) != 1 or not others:
            for name, mean in means.items():
                lines.append(f"  {group}: {name} {mean * 1e6:,.3f} us")
            continue
        ((native_name, native_mean),) = native.items()
        for name, mean in others.items():
            lines.append(
                f"  {group}: {native_name} {native_mean * 1e6:,.2f} us vs {name} {mean * 1e6:,.2f} us:"
                f" native is {mean / native_mean:.1f}x faster"
            )
    if lines:
        terminalreporter.write_sep("=", "native vs pure Python (ratio of means, this run)")
        for line in lines:
            terminalreporter.write_line(line)
