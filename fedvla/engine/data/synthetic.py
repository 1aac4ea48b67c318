"""Synthetic SO-100-style LeRobot datasets in which the action is learnable.

Each episode has a task and a target pose. The camera shows a solid colour that encodes the
target; the task string adds a fixed offset to it. The arm moves a fixed fraction of the way
from its state to the target every frame, so the action (the next state) is a function of the
state, of the colour seen, and of the task: a policy that reads both can learn it.
"""

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

SO100_JOINTS = (
    "shoulder_pan",
    "shoulder_lift",
    "elbow_flex",
    "wrist_flex",
    "wrist_roll",
    "gripper",
)
TASKS = ("pick the cube", "push the block", "stack the cups")
STEP_FRACTION = 0.2
"""How far the arm moves towards its target in one frame."""


@dataclass(frozen=True)
class SyntheticSpec:
    """What to generate; the defaults are small enough for CPU tests."""

    repo_id: str = "synthetic/so100"
    episodes: int = 6
    frames_per_episode: int = 20
    cameras: tuple[str, ...] = ("front",)
    image_shape: tuple[int, int] = (24, 32)
    """Height and width of every camera."""
    fps: int = 30
    use_videos: bool = False
    streaming_encoding: bool = False
    """Videos: encode frames as they are added (no image files), as lerobot records live."""
    tasks: tuple[str, ...] = TASKS
    state_dim: int = len(SO100_JOINTS)
    seed: int = 0


def target_for(colour: np.ndarray, task_index: int, state_dim: int) -> np.ndarray:
    """The pose an episode moves to: a fixed function of its colour (RGB in [0, 1]) and task."""
    mixing = np.random.default_rng(1234).uniform(-1.0, 1.0, size=(state_dim, 3))
    task_offset = np.random.default_rng(4321 + task_index).uniform(-0.5, 0.5, size=state_dim)
    return (mixing @ (colour - 0.5) * 2.0 + task_offset).astype(np.float32)


def dataset_features(spec: SyntheticSpec) -> dict[str, dict[str, object]]:
    names = list(SO100_JOINTS[: spec.state_dim]) + [
        f"joint_{i}" for i in range(len(SO100_JOINTS), spec.state_dim)
    ]
    height, width = spec.image_shape
    image_dtype = "video" if spec.use_videos else "image"
    features: dict[str, dict[str, object]] = {
        "observation.state": {"dtype": "float32", "shape": (spec.state_dim,), "names": names},
        "action": {"dtype": "float32", "shape": (spec.state_dim,), "names": names},
    }
    for camera in spec.cameras:
        features[f"observation.images.{camera}"] = {
            "dtype": image_dtype,
            "shape": (height, width, 3),
            "names": ["height", "width", "channels"],
        }
    return features


def create_dataset(root: Path, spec: SyntheticSpec) -> "LeRobotDataset":
    """An empty LeRobotDataset (v3) under root with the spec's features, to add episodes to."""
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    return LeRobotDataset.create(
        repo_id=spec.repo_id,
        fps=spec.fps,
        features=dataset_features(spec),
        root=root,
        robot_type="so100_follower",
        use_videos=spec.use_videos,
        streaming_encoding=spec.use_videos and spec.streaming_encoding,
    )


def generate_dataset(root: Path, spec: SyntheticSpec) -> Path:
    """Write a LeRobotDataset (v3) under root and return root. Root must not exist yet."""
    rng = np.random.default_rng(spec.seed)
    dataset = create_dataset(root, spec)
    height, width = spec.image_shape
    for episode in range(spec.episodes):
        task_index = episode % len(spec.tasks)
        colour = rng.uniform(0.0, 1.0, size=3)
        target = target_for(colour, task_index, spec.state_dim)
        state = rng.uniform(-1.0, 1.0, size=spec.state_dim).astype(np.float32)
        for _ in range(spec.frames_per_episode):
            action = (state + STEP_FRACTION * (target - state)).astype(np.float32)
            frame: dict[str, object] = {
                "observation.state": state.copy(),
                "action": action,
                "task": spec.tasks[task_index],
            }
            for camera_index, camera in enumerate(spec.cameras):
                shade = colour if camera_index == 0 else 1.0 - colour
                noise = rng.uniform(-0.03, 0.03, size=(height, width, 3))
                pixels = np.clip(shade[None, None, :] + noise, 0.0, 1.0)
                frame[f"observation.images.{camera}"] = (pixels * 255).astype(np.uint8)
            dataset.add_frame(frame)
            state = action
        dataset.save_episode()
    dataset.finalize()
    return root


def main(argv: list[str] | None = None) -> int:
    """`python -m fedvla.engine.data.synthetic ROOT`: write a synthetic dataset for trying the
    engine."""
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m fedvla.engine.data.synthetic", description=main.__doc__
    )
    parser.add_argument("root", type=Path, help="folder to create (must not exist)")
    parser.add_argument("--episodes", type=int, default=SyntheticSpec.episodes)
    parser.add_argument("--frames", type=int, default=SyntheticSpec.frames_per_episode)
    parser.add_argument("--cameras", default="front", help="comma-separated camera names")
    parser.add_argument("--video", action="store_true", help="store cameras as MP4 video")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.root.exists():
        parser.error(f"{args.root} exists already")
    spec = SyntheticSpec(
        episodes=args.episodes,
        frames_per_episode=args.frames,
        cameras=tuple(args.cameras.split(",")),
        use_videos=args.video,
        seed=args.seed,
    )
    generate_dataset(args.root, spec)
    print(f"wrote {args.episodes} episodes of {spec.repo_id} to {args.root}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
