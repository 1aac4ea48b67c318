"""bench/summary.py: the README's Performance rows from the committed results."""

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))

import summary  # noqa: E402


def test_learning_row_gives_each_seeds_ratio_and_both_verdicts() -> None:
    so101 = json.loads((summary.RESULTS_DIR / "learning_parity_so101.json").read_text())
    row = next(r for r in summary.learning_rows() if "SO-101-format" in r[0])

    seeds = so101["seeds"]
    assert len(seeds) >= 2
    assert ", ".join(map(str, seeds)) in row[0]
    for label, run in so101["runs"].items():
        if label == "centralized":
            continue
        ratios = run["ratio_to_centralized"]
        per_seed = "/".join(f"{ratios['by_seed'][str(s)]:.3f}" for s in seeds)
        assert f"{label} {ratios['mean']:.3f} ({per_seed})" in row[1]
    target = so101["target"]
    for name in ("default", "best"):
        assert f"({target[name]}): mean " in row[3]
    assert row[3].count("every seed") == 2
