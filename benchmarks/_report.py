"""What each benchmark prints and, with --record, appends to benchmarks/RESULTS.md."""

from __future__ import annotations

import os
import platform
from pathlib import Path

RESULTS = Path(__file__).with_name("RESULTS.md")


def machine() -> str:
    """One line naming this machine: architecture, cores and Python."""
    return f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"


def publish(text: str, record: bool) -> None:
    """Print a results section; with ``record``, append it to RESULTS.md as well."""
    print(text)
    if record:
        with open(RESULTS, "a") as f:
            f.write("\n" + text)
