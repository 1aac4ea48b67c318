"""The SO-101-format recordings of the learning benchmark have a real recording's units and
dynamics (fedvla.engine.data.pick_place)."""

import numpy as np

from fedvla.engine.data.pick_place import (
    CUBE_WIDTH,
    LIFT,
    RELEASE,
    PickPlaceSpec,
    follower_trajectory,
    leader_trajectory,
    waypoints,
)


def _episode(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    poses, _, _ = waypoints(rng)
    leader, holding = leader_trajectory(poses, PickPlaceSpec(), rng)
    return leader, follower_trajectory(leader, holding, rng), holding


def test_joints_are_in_degrees_within_an_so101s_range_and_move_smoothly() -> None:
    leader, follower, _ = _episode(0)
    assert 250 <= len(leader) <= 500  # about 12 s at 30 fps
    assert np.all(np.abs(follower[:, :5]) <= 100.5)
    assert follower[:, 5].min() > -1 and follower[:, 5].max() < 100
    assert np.ptp(follower[:, 0]) > 20  # the arm swings between cube and goal
    # Minimum-jerk motion: no joint jumps more than a few degrees between frames at 30 fps.
    assert np.abs(np.diff(leader, axis=0)).max() < 6.0


def test_action_leads_the_state_and_the_gripper_stalls_on_the_cube() -> None:
    leader, follower, segment = _episode(1)

    def error(lag: int) -> float:
        return float(np.abs(leader[: len(leader) - lag] - follower[lag:]).mean())

    assert min(range(6), key=error) >= 2  # the follower reaches the leader's position frames later
    held = ((segment >= LIFT) & (segment < RELEASE)).nonzero()[0]
    assert np.all(leader[held, 5] < 5.0)
    assert np.all(follower[held, 5] > CUBE_WIDTH - 1.0)


def test_episodes_differ_in_where_the_cube_and_goal_are() -> None:
    rng = np.random.default_rng(0)
    cubes = [waypoints(rng)[1] for _ in range(4)]
    assert len({tuple(np.round(c, 3)) for c in cubes}) == 4
