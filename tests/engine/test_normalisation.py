"""Normalisation statistics come from exactly the frames each client trains on.

The dataset's episode 3 is extreme (state and action about 10,000, the others within +-2); the
partition holds it out. If any of its frames reached a client's statistics, their maximum,
mean and count would show it.
"""

from pathlib import Path

import numpy as np
import pytest

from fedvla.core.experiment_config import DatasetRef, FederationConfig, Partition
from fedvla.engine.data.partition import plan_data
from fedvla.engine.data.synthetic import TASKS, SyntheticSpec, create_dataset
from fedvla.engine.federation import task

EPISODES = 4
FRAMES = 10
EXTREME_EPISODE = 3
EXTREME = 10_000.0
KEYS = ("observation.state", "action")


def _write(root: Path) -> None:
    dataset = create_dataset(root, SyntheticSpec(repo_id="synthetic/extreme", cameras=()))
    rng = np.random.default_rng(5)
    for episode in range(EPISODES):
        offset = EXTREME if episode == EXTREME_EPISODE else float(episode)
        for _ in range(FRAMES):
            state = (offset + rng.uniform(-1, 1, size=6)).astype(np.float32)
            dataset.add_frame(
                {
                    "observation.state": state,
                    "action": (state + 0.1).astype(np.float32),
                    "task": TASKS[0],
                }
            )
        dataset.save_episode()
    dataset.finalize()


@pytest.fixture(scope="module")
def extreme(tmp_path_factory: pytest.TempPathFactory) -> DatasetRef:
    root = tmp_path_factory.mktemp("extreme") / "dataset"
    _write(root)
    return DatasetRef(repo_id="synthetic/extreme", root=str(root))


def _frames(ref: DatasetRef, episodes: list[int]) -> dict[str, np.ndarray]:
    """The dataset's frames of these episodes, read from its parquet files directly."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    assert ref.root is not None
    files = sorted(Path(ref.root, "data").rglob("*.parquet"))
    table = pa.concat_tables(pq.read_table(p) for p in files)
    rows = table.filter(
        pc.is_in(table["episode_index"], pa.array(episodes, table["episode_index"].type))
    )
    return {key: np.array(rows[key].to_pylist(), dtype=np.float64) for key in KEYS}


def _plan_holding_out_the_extreme_episode(ref: DatasetRef) -> FederationConfig:
    for seed in range(100):
        config = FederationConfig(
            policy="tiny",
            seed=seed,
            partition=Partition(dataset=ref, num_clients=2, holdout_episodes=1),
        )
        if plan_data(config).holdout[0].episodes == [EXTREME_EPISODE]:
            return config
    raise AssertionError("no seed holds out the extreme episode")


def test_a_clients_statistics_are_those_of_its_own_episodes(extreme: DatasetRef) -> None:
    own = extreme.model_copy(update={"episodes": [0, 1]})
    data = task.open_dataset(own, chunk_size=4, owner="client-0")

    frames = _frames(extreme, [0, 1])
    for key in KEYS:
        stats = data.stats[key]
        assert stats["count"].tolist() == [2 * FRAMES]
        np.testing.assert_allclose(stats["mean"], frames[key].mean(axis=0), rtol=1e-6)
        np.testing.assert_allclose(stats["std"], frames[key].std(axis=0), rtol=1e-5)
        np.testing.assert_allclose(stats["max"], frames[key].max(axis=0), rtol=1e-6)
        np.testing.assert_allclose(stats["min"], frames[key].min(axis=0), rtol=1e-6)
        assert float(stats["q99"].max()) < 3.0
    # The dataset's own meta/stats.json covers all four episodes, the extreme one included.
    whole = data.dataset.dataset.meta.stats["observation.state"]
    assert whole["count"].tolist() == [EPISODES * FRAMES] and whole["max"].max() > EXTREME / 2


def test_held_out_frames_never_reach_the_clients_or_the_merged_statistics(
    extreme: DatasetRef,
) -> None:
    config = _plan_holding_out_the_extreme_episode(extreme)
    plan = plan_data(config)
    clients = [task.open_dataset(ref, chunk_size=4, owner="c") for ref in plan.clients]

    for ref, data in zip(plan.clients, clients, strict=True):
        assert ref.episodes is not None and EXTREME_EPISODE not in ref.episodes
        assert data.stats["action"]["count"].tolist() == [len(ref.episodes) * FRAMES]
        assert float(data.stats["action"]["max"].max()) < 5.0
    merged = task.merge_stats([c.stats for c in clients])
    # Exactly the episodes the clients train on: not the server's, nor those a client keeps
    # back for its own (federated) evaluation.
    episodes = sorted(e for ref in plan.clients for e in ref.episodes or [])
    kept_back = sorted(e for ref in plan.client_eval if ref is not None for e in ref.episodes or [])
    assert kept_back and not set(kept_back) & set(episodes)
    assert sorted(episodes + kept_back + [EXTREME_EPISODE]) == list(range(EPISODES))
    trained = _frames(extreme, episodes)
    for key in KEYS:
        assert merged[key]["count"].tolist() == [len(episodes) * FRAMES]
        np.testing.assert_allclose(merged[key]["mean"], trained[key].mean(axis=0), rtol=1e-6)
        np.testing.assert_allclose(merged[key]["std"], trained[key].std(axis=0), rtol=1e-5)
        assert float(merged[key]["max"].max()) < 5.0


def test_evaluation_data_is_opened_without_statistics(extreme: DatasetRef) -> None:
    held = extreme.model_copy(update={"episodes": [EXTREME_EPISODE]})
    assert task.open_dataset(held, chunk_size=4, owner="server", with_stats=False).stats == {}


def test_a_clients_own_held_out_episodes_never_reach_its_statistics(extreme: DatasetRef) -> None:
    """One dataset per client (and a site, which splits its own the same way): the episodes a
    client keeps back for federated evaluation are evaluated on, never trained on nor counted."""
    for seed in range(100):
        config = FederationConfig(
            policy="tiny",
            seed=seed,
            min_clients=1,
            client_holdout_fraction=0.25,
            client_datasets=[extreme],
        )
        plan = plan_data(config)
        held = plan.client_eval[0]
        if held is not None and held.episodes == [EXTREME_EPISODE]:
            break
    else:
        raise AssertionError("no seed keeps the extreme episode back")
    [train] = plan.clients
    assert train.episodes == [0, 1, 2]
    data = task.open_dataset(train, chunk_size=4, owner="client-0")
    trained = _frames(extreme, [0, 1, 2])
    for key in KEYS:
        assert data.stats[key]["count"].tolist() == [3 * FRAMES]
        np.testing.assert_allclose(data.stats[key]["mean"], trained[key].mean(axis=0), rtol=1e-6)
        assert float(data.stats[key]["max"].max()) < 5.0
    evaluated = task.open_dataset(held, chunk_size=4, owner="client-0", with_stats=False)
    assert evaluated.stats == {} and len(evaluated.dataset) == FRAMES
