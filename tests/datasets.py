"""Small real LeRobot datasets kept in the repository for the checks that read a dataset's
metadata (fedvla.core.services.preflight), so the fast tests need not import lerobot to write them.

They are written by fedvla.engine.data.synthetic; ``python -m tests.datasets`` rewrites them, and
tests/api/test_preflight.py (slow) checks that the helper still writes the same metadata.
The tests point ``HF_LEROBOT_HOME`` at ``LEROBOT_HOME`` (tests/conftest.py), so each is also a
cached hub dataset named by its repo id.
"""

import shutil
from pathlib import Path

from fedvla.engine.data.synthetic import SyntheticSpec, generate_dataset

LEROBOT_HOME = Path(__file__).parent / "data" / "lerobot"
SPECS = {
    "test/so100_pick": SyntheticSpec(repo_id="test/so100_pick", episodes=4, frames_per_episode=2),
    "test/two_cameras": SyntheticSpec(
        repo_id="test/two_cameras",
        episodes=2,
        frames_per_episode=2,
        cameras=("top", "wrist"),
        tasks=("pick the cube",),
    ),
}


def root_of(repo_id: str) -> Path:
    return LEROBOT_HOME / repo_id


def write(home: Path) -> None:
    """Every dataset of SPECS under home/<repo_id>, replacing what is there."""
    for repo_id, spec in SPECS.items():
        shutil.rmtree(home / repo_id, ignore_errors=True)
        generate_dataset(home / repo_id, spec)


if __name__ == "__main__":
    write(LEROBOT_HOME)
