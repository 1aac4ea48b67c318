"""A Grid that shows the ServerApp only the nodes of the experiment's sites.

A SuperLink admits every approved site; a run must train only on the sites of its experiment.
Node ids are fixed when a site's key is registered (before the run starts), so the set is
computed once, from the SuperLink's node list matched to the sites' public keys.

It also looks for replies every REPLY_PULL_INTERVAL_S, where Flower's grid sleeps 3 s between
looks (on average 1.5 s added to every round), and pulls their arrays with a shorter backoff
(worker.federation.transport.pull_objects_sooner).
"""

import time
from collections.abc import Iterable

from flwr.app import Message, RecordDict
from flwr.serverapp import Grid
from flwr.supercore.run import Run
from sqlmodel import Session, col, select

from app.core.config import Settings
from app.core.db import make_engine
from app.core.public_keys import InvalidPublicKey, normalise_public_key
from app.models import Site
from worker.deployment.node_registry import live_nodes_by_key
from worker.federation.transport import pull_objects_sooner

REPLY_PULL_INTERVAL_S = 0.05


def experiment_node_ids(settings: Settings, site_ids: list[int]) -> set[int]:
    engine = make_engine(settings.database_url)
    try:
        with Session(engine) as session:
            sites = list(session.exec(select(Site).where(col(Site.id).in_(site_ids))))
    finally:
        engine.dispose()
    keys = set()
    for site in sites:
        try:
            keys.add(normalise_public_key(site.public_key or ""))
        except InvalidPublicKey:
            continue
    return {node.node_id for key, node in live_nodes_by_key(settings).items() if key in keys}


class ExperimentGrid(Grid):
    """Delegates to Flower's grid; ``get_node_ids`` answers only the allowed nodes."""

    def __init__(self, grid: Grid, allowed: set[int]) -> None:
        from flwr.superlink.grid import http_grid

        self.grid = grid
        self.allowed = allowed
        pull_objects_sooner(http_grid)  # this ServerApp process's grid pulls replies sooner

    def set_run(self, run: Run) -> None:
        self.grid.set_run(run)

    @property
    def run(self) -> Run:
        return self.grid.run

    def create_message(
        self,
        content: RecordDict,
        message_type: str,
        dst_node_id: int,
        group_id: str,
        ttl: float | None = None,
    ) -> Message:
        return self.grid.create_message(content, message_type, dst_node_id, group_id, ttl)

    def get_node_ids(self) -> Iterable[int]:
        return [node for node in self.grid.get_node_ids() if node in self.allowed]

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        return self.grid.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return self.grid.pull_messages(message_ids)

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        """Flower's send_and_receive, looking for the replies every REPLY_PULL_INTERVAL_S."""
        waiting = set(self.grid.push_messages(messages))
        deadline = time.monotonic() + (timeout or 0.0)
        replies: list[Message] = []
        while waiting and (timeout is None or time.monotonic() < deadline):
            arrived = list(self.grid.pull_messages(waiting))
            replies.extend(arrived)
            waiting -= {reply.metadata.reply_to_message_id for reply in arrived}
            if waiting:
                time.sleep(REPLY_PULL_INTERVAL_S)
        return replies
