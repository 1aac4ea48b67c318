"""Synthetic SO-101 pick-and-place recordings with a real recording's units and dynamics.

fedvla.engine.data.synthetic's datasets are learnable but unlike a robot's: joints in [-1, 1]
moving a fixed fraction of the way to one target. A real SO-101 recording (lerobot-record with a
leader arm) has six joints in degrees (shoulder_pan about +-100, gripper 0-100), smooth human
motions through waypoints lasting hundreds of frames at 30 fps, an action (the leader's position)
that leads the follower's state by a few frames, a gripper that stalls on the object while the
leader closes it, and encoder noise. This module writes such recordings through the same LeRobot
writer (synthetic.create_dataset), for the learning benchmark: minimum-jerk segments between
waypoints of a pick-and-place (rest, above the cube, grasp, lift, above the goal, release, rest),
the cube and goal placed at random in each episode, and two small cameras that see them.
"""

import itertools
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedvla.engine.data.synthetic import SyntheticSpec, create_dataset

REST = np.array([0.0, -98.0, 96.0, 72.0, 0.0, 1.5])
"""Degrees: the folded pose an SO-101 starts and ends a recording in."""
GRIPPER_OPEN = 45.0
GRIPPER_CLOSED = 1.0
CUBE_WIDTH = 14.0
"""Where the follower's gripper stalls on the cube while the leader closes fully."""
SERVO_LAG_FRAMES = 3.0
"""Time constant of the follower tracking the leader (first-order, in frames)."""
ENCODER_NOISE_DEG = 0.1
"""About one Feetech STS3215 tick (360 / 4096 degrees)."""


@dataclass(frozen=True)
class PickPlaceSpec:
    repo_id: str = "synthetic/so101_pick_place"
    episodes: int = 4
    seconds_per_segment: float = 1.2
    """Mean length of one motion between waypoints (9 segments an episode); lengths vary +-30%."""
    cameras: tuple[str, ...] = ("front", "wrist")
    image_shape: tuple[int, int] = (24, 32)
    fps: int = 30
    task: str = "pick up the cube and place it in the box"
    seed: int = 0

    def as_synthetic(self) -> SyntheticSpec:
        return SyntheticSpec(
            repo_id=self.repo_id,
            episodes=self.episodes,
            cameras=self.cameras,
            image_shape=self.image_shape,
            fps=self.fps,
            tasks=(self.task,),
        )


def reach_pose(pan: float, reach: float, roll: float, gripper: float, low: bool) -> np.ndarray:
    """Joint angles (degrees) over a point on the table: pan, how far out (0-1), wrist roll;
    `low` lowers the gripper onto the table, otherwise it hovers above."""
    lift = -55.0 + 45.0 * reach + (14.0 if low else 0.0)
    elbow = 70.0 - 65.0 * reach - (8.0 if low else 0.0)
    wrist = 60.0 - 25.0 * reach + (12.0 if low else 0.0)
    return np.array([pan, lift, elbow, wrist, roll, gripper])


def waypoints(rng: np.random.Generator) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    """One episode's waypoints, with where its cube and goal are (pan degrees, reach 0-1)."""
    cube = np.array([rng.uniform(-45.0, 45.0), rng.uniform(0.2, 0.9)])
    goal = np.array([rng.uniform(-80.0, 80.0), rng.uniform(0.2, 0.9)])
    roll = rng.uniform(-40.0, 40.0)
    above_cube = reach_pose(cube[0], cube[1], roll, GRIPPER_OPEN, low=False)
    at_cube = reach_pose(cube[0], cube[1], roll, GRIPPER_OPEN, low=True)
    grasped = reach_pose(cube[0], cube[1], roll, GRIPPER_CLOSED, low=True)
    lifted = reach_pose(cube[0], cube[1], roll, GRIPPER_CLOSED, low=False)
    above_goal = reach_pose(goal[0], goal[1], 0.0, GRIPPER_CLOSED, low=False)
    at_goal = reach_pose(goal[0], goal[1], 0.0, GRIPPER_CLOSED, low=True)
    released = reach_pose(goal[0], goal[1], 0.0, GRIPPER_OPEN, low=True)
    clear = reach_pose(goal[0], goal[1], 0.0, GRIPPER_OPEN, low=False)
    rest = REST + rng.normal(0.0, 1.0, size=6) * [2, 1, 1, 2, 2, 0]
    poses = [rest, above_cube, at_cube, grasped, lifted, above_goal, at_goal, released, clear]
    return [*poses, REST.copy()], cube, goal


def minimum_jerk(start: np.ndarray, end: np.ndarray, frames: int) -> np.ndarray:
    tau = np.linspace(0.0, 1.0, frames, endpoint=False)[:, None]
    return start + (end - start) * (10 * tau**3 - 15 * tau**4 + 6 * tau**5)


GRASP, LIFT, RELEASE = 2, 3, 6
"""Segments (motions between waypoints): the gripper closes on the cube in GRASP, the cube rides
with the gripper from LIFT until RELEASE, when the gripper opens over the goal."""


def leader_trajectory(
    poses: list[np.ndarray], spec: PickPlaceSpec, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """The leader arm's positions frame by frame (the action), and each frame's segment."""
    segments, segment = [], []
    for index, (start, end) in enumerate(itertools.pairwise(poses)):
        seconds = spec.seconds_per_segment * rng.uniform(0.7, 1.3)
        frames = max(int(seconds * spec.fps), 4)
        segments.append(minimum_jerk(start, end, frames))
        segment += [index] * frames
    leader = np.concatenate([*segments, poses[-1][None, :]])
    segment.append(len(poses) - 1)
    # A human hand on the leader: slow tremor of a fraction of a degree.
    tremor = np.cumsum(rng.normal(0.0, 0.05, size=leader.shape), axis=0)
    tremor -= np.linspace(0, 1, len(leader))[:, None] * tremor[-1]
    return leader + tremor, np.array(segment)


def follower_trajectory(
    leader: np.ndarray, segment: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """The follower's measured joints: a first-order lag behind the leader, the gripper stalled
    on the cube from the grasp until the leader opens it wider than the cube, encoder noise."""
    follower = np.empty_like(leader)
    position = leader[0].copy()
    alpha = 1.0 / SERVO_LAG_FRAMES
    for frame, target in enumerate(leader):
        goal = target.copy()
        if GRASP <= segment[frame] <= RELEASE:
            goal[5] = max(goal[5], CUBE_WIDTH)
        position = position + alpha * (goal - position)
        follower[frame] = position
    return follower + rng.normal(0.0, ENCODER_NOISE_DEG, size=follower.shape)


def _spot(pan: float, reach: float, height: int, width: int) -> tuple[int, int]:
    """A table point's pixel in the front camera (looking down the arm's base)."""
    col = round((pan + 100.0) / 200.0 * (width - 1))
    row = round((1.0 - reach) * (height - 1))
    return min(max(row, 0), height - 1), min(max(col, 0), width - 1)


def _draw(image: np.ndarray, centre: tuple[int, int], colour: tuple[int, int, int]) -> None:
    row, col = centre
    image[max(row - 1, 0) : row + 2, max(col - 1, 0) : col + 2] = colour


def front_image(
    spec: PickPlaceSpec, cube_at: np.ndarray, goal: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    height, width = spec.image_shape
    image = np.full((height, width, 3), 150, dtype=np.int16)
    _draw(image, _spot(goal[0], goal[1], height, width), (40, 60, 200))
    _draw(image, _spot(cube_at[0], cube_at[1], height, width), (210, 40, 40))
    image += rng.integers(-6, 7, size=image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def wrist_image(
    spec: PickPlaceSpec,
    state: np.ndarray,
    cube: np.ndarray,
    holding: bool,
    rng: np.random.Generator,
) -> np.ndarray:
    """The cube fills more of the wrist camera as the gripper nears it; all of it when held."""
    height, width = spec.image_shape
    image = np.full((height, width, 3), 90, dtype=np.int16)
    distance = 1.0 if holding else min(abs(state[0] - cube[0]) / 60.0, 1.0)
    size = round((1.0 - distance) * min(height, width) / 2)
    if size > 0:
        top, left = height // 2 - size, width // 2 - size
        image[max(top, 0) : top + 2 * size, max(left, 0) : left + 2 * size] = (210, 40, 40)
    image += rng.integers(-6, 7, size=image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def generate_pick_place(root: Path, spec: PickPlaceSpec) -> Path:
    """Write the recordings as a LeRobotDataset (v3) under root and return root."""
    rng = np.random.default_rng(spec.seed)
    dataset = create_dataset(root, spec.as_synthetic())
    for _ in range(spec.episodes):
        poses, cube, goal = waypoints(rng)
        leader, segment = leader_trajectory(poses, spec, rng)
        follower = follower_trajectory(leader, segment, rng)
        for frame in range(len(leader)):
            state = follower[frame]
            holding = LIFT <= segment[frame] < RELEASE
            if holding:
                # The cube rides in the gripper: it is where the arm is.
                cube_at = np.array([state[0], (state[1] + 55.0) / 45.0])
            elif segment[frame] >= RELEASE:
                cube_at = goal
            else:
                cube_at = cube
            images = {
                "front": front_image(spec, cube_at, goal, rng),
                "wrist": wrist_image(spec, state, cube, holding, rng),
            }
            record: dict[str, object] = {
                "observation.state": state.astype(np.float32),
                "action": leader[frame].astype(np.float32),
                "task": spec.task,
            }
            for index, camera in enumerate(spec.cameras):
                record[f"observation.images.{camera}"] = images[("front", "wrist")[index % 2]]
            dataset.add_frame(record)
        dataset.save_episode()
    dataset.finalize()
    return root
