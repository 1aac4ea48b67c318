"""What every benchmark script shares: the machine it ran on, and writing its JSON and table.

Each script answers one question and writes bench/results/<name>.json (the figures, the machine,
its load at start and end) and bench/results/<name>.md (a markdown table of the same figures).
"""

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

RESULTS_DIR = ROOT / "bench" / "results"


def machine() -> dict[str, Any]:
    """The machine, in the terms a reader compares benchmarks by."""
    memory_gib = None
    try:
        pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        memory_gib = round(pages / 2**30, 1)
    except (ValueError, OSError):
        pass
    return {
        "platform": platform.platform(),
        "processor": _cpu_model(),
        "cpus": os.cpu_count(),
        "memory_gib": memory_gib,
        "python": platform.python_version(),
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_average() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


def available_memory_bytes() -> int:
    """MemAvailable from /proc/meminfo (what can be allocated without swapping)."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no MemAvailable in /proc/meminfo")


class Recorder:
    """One benchmark's results; `write` adds the machine, its load and the time, saves both
    and prints the table."""

    def __init__(self, name: str, question: str, command: str) -> None:
        self.name = name
        self.payload: dict[str, Any] = {
            "benchmark": name,
            "question": question,
            "command": command,
            "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "machine": machine(),
            "load_average_start": load_average(),
        }

    def write(
        self,
        results: dict[str, Any],
        table: str,
        *,
        out_dir: Path = RESULTS_DIR,
    ) -> Path:
        self.payload.update(results)
        self.payload["finished_at"] = datetime.now(UTC).isoformat(timespec="seconds")
        self.payload["load_average_end"] = load_average()
        out_dir.mkdir(parents=True, exist_ok=True)
        target = out_dir / f"{self.name}.json"
        target.write_text(json.dumps(self.payload, indent=2) + "\n")
        header = (
            f"# {self.name}\n\n{self.payload['question']}\n\n"
            f"Measured {self.payload['finished_at']} on {self.payload['machine']['processor']} "
            f"({self.payload['machine']['cpus']} CPUs), load average "
            f"{self.payload['load_average_start'][0]} at start, "
            f"{self.payload['load_average_end'][0]} at end.\n\n"
            f"    {self.payload['command']}\n\n"
        )
        (out_dir / f"{self.name}.md").write_text(header + table.rstrip() + "\n")
        print(table)
        return target


def bench_parser(doc: str, *, quick: bool = True) -> argparse.ArgumentParser:
    """A script's parser: its docstring's first line, --out-dir, and --quick (smoke sizes)."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    if quick:
        parser.add_argument("--quick", action="store_true", help="smoke-test sizes")
    parser.add_argument("--out-dir", type=Path, default=RESULTS_DIR)
    return parser


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    def cell(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:.4g}"
        if isinstance(value, bool):
            return "met" if value else "NOT met"
        return str(value)

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100), interpolated; the one definition all scripts use."""
    if not values:
        raise ValueError("no values")
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    position = (len(ordered) - 1) * q / 100
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def aware(moment: datetime) -> datetime:
    """A timestamp read back from SQLite (naive, UTC) made comparable with aware ones."""
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def wait_until(condition: Callable[[], Any], timeout_s: float, what: str) -> Any:
    """Polls ``condition`` every 5 ms until it is truthy; TimeoutError naming ``what``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.005)
    raise TimeoutError(what)
