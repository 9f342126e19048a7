"""Speed and quality benchmarks, each reported as a ratio against a baseline measured in the
same process (never as timed assertions in tests). Run all with ``python -m benchmarks``."""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable


def format_table(result: dict) -> str:
    """A benchmark's ``{"title", "notes", "rows"}`` as a markdown section."""
    rows = result["rows"]
    header = list(rows[0])
    lines = [
        f"## {result['title']}",
        "",
        result.get("notes", ""),
        "",
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" for _ in header) + "|",
    ]
    lines += ["| " + " | ".join(str(row[k]) for k in header) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def run_standalone(run: Callable[..., dict], doc: str) -> None:
    """``python -m benchmarks.NAME [--quick]``: run one benchmark and print its table."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few steps, for a smoke run")
    print(format_table(run(quick=parser.parse_args().quick)))


def median_ms(step: Callable[[], object], repeats: int) -> float:
    """Median wall time of ``step()`` in milliseconds, after one warm-up call."""
    step()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return 1000.0 * statistics.median(times)
