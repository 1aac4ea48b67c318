"""Benchmark smoke tests: each script runs as documented, with tiny sizes, into a temp folder."""

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def run_bench(tmp_path: Path):  # type: ignore[no-untyped-def]
    """run_bench(name, *args): run bench/<name>.py with --out-dir tmp; its JSON and markdown
    (result_name: the results' name where it is not the script's)."""

    def run(name: str, *args: str, result_name: str | None = None) -> tuple[dict[str, Any], str]:
        out = tmp_path / "results"
        subprocess.run(
            [sys.executable, str(ROOT / "bench" / f"{name}.py"), *args, "--out-dir", str(out)],
            check=True,
            cwd=ROOT,
            env={**os.environ, "HF_HUB_OFFLINE": "1"},
            timeout=900,
        )
        written = result_name or name
        result = json.loads((out / f"{written}.json").read_text())
        assert result["benchmark"] == written
        assert len(result["load_average_start"]) == 3 and len(result["load_average_end"]) == 3
        assert result["machine"]["cpus"] >= 1
        return result, (out / f"{written}.md").read_text()

    return run
