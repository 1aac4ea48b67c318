"""A Grid that shows the ServerApp only the nodes of the experiment's sites.

A SuperLink admits every approved site; a run must train only on the sites of its experiment.
A site's node id changes when it re-keys (its new key is registered once it is approved
again), so the allowed set is read again, at most every REFRESH_S, from the SuperLink's node
list matched to the sites' public keys as the database holds them now.

Each message it sends carries its site's camera map (the site's cameras renamed to the
experiment's), computed when the run starts from the sites as the database holds them then, not
from the startup kit, which may predate the experiment.

It also looks for replies every REPLY_PULL_INTERVAL_S, where Flower's grid sleeps 3 s between
looks (on average 1.5 s added to every round), and pulls their arrays with a shorter backoff
(fedvla.engine.federation.transport.pull_objects_sooner), and pushes a message's objects 8 at a
time, not 2 (push_objects_wider).
"""

import time
from collections.abc import Callable, Iterable, Mapping

from flwr.app import Message
from flwr.serverapp import Grid
from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import Session, col, select

from fedvla.core.config import Settings
from fedvla.core.db import make_engine
from fedvla.core.models import Site
from fedvla.core.services import compatibility
from fedvla.engine.federation.protocol import with_camera_map
from fedvla.engine.federation.transport import pull_objects_sooner, push_objects_wider
from fedvla.engine.federation.wrapped_grid import WrappedGrid
from fedvla.sites.node_registry import nodes_of_sites
from fedvla.sites.superlink import SuperLinkError, list_nodes

REFRESH_S = 2.0
REPLY_PULL_INTERVAL_S = 0.05


def experiment_sites(settings: Settings, site_ids: list[int]) -> list[Site]:
    engine = make_engine(settings.database_url)
    try:
        with Session(engine) as session:
            return list(session.exec(select(Site).where(col(Site.id).in_(site_ids))))
    finally:
        engine.dispose()


def experiment_nodes(settings: Settings, site_ids: list[int]) -> dict[int, str]:
    """Node id -> site name of the experiment's sites' registered nodes."""
    return nodes_of_sites(experiment_sites(settings, site_ids), list_nodes(settings))


def experiment_camera_maps(settings: Settings, site_ids: list[int]) -> dict[str, dict[str, str]]:
    """Site name -> its cameras renamed to the experiment's reference site's ({} if they agree)."""
    sites = experiment_sites(settings, site_ids)
    return {site.name: compatibility.cameras_renamed_for(site, sites) or {} for site in sites}


class ExperimentGrid(WrappedGrid):
    """Delegates to Flower's grid; ``get_node_ids`` answers only the allowed nodes.

    ``allowed`` reads the allowed nodes (node id -> site name); when it fails (the SuperLink
    or the database away for a moment) the last answer stands.
    """

    def __init__(
        self,
        grid: Grid,
        allowed: Callable[[], dict[int, str]],
        refresh_s: float = REFRESH_S,
        camera_maps: Mapping[str, dict[str, str]] | None = None,
    ) -> None:
        from flwr.superlink.grid import http_grid

        pull_objects_sooner(http_grid)  # this ServerApp process's grid pulls replies sooner
        push_objects_wider(http_grid)  # and pushes a train message's objects 8 at a time
        super().__init__(grid)
        self.allowed = allowed
        self.refresh_s = refresh_s
        self.camera_maps = dict(camera_maps or {})
        self.names: dict[int, str] = {}
        self._read_at: float | None = None

    def _refresh(self) -> dict[int, str]:
        now = time.monotonic()
        if self._read_at is None or now - self._read_at >= self.refresh_s:
            try:
                self.names = self.allowed()
            except (SuperLinkError, SQLAlchemyError, OSError):
                if self._read_at is None:
                    raise
            self._read_at = now
        return self.names

    def node_name(self, node: int) -> str | None:
        """The site name of an allowed node."""
        return self._refresh().get(node)

    def get_node_ids(self) -> Iterable[int]:
        allowed = self._refresh()
        return [node for node in self.grid.get_node_ids() if node in allowed]

    def _for_their_sites(self, messages: Iterable[Message]) -> list[Message]:
        """The messages, each to a site given that site's camera map."""
        messages = list(messages)
        for message in messages:
            name = self.node_name(message.metadata.dst_node_id)
            if name is not None and name in self.camera_maps:
                with_camera_map(message, self.camera_maps[name])
        return messages

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        return self.grid.push_messages(self._for_their_sites(messages))

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        """Flower's send_and_receive, looking for the replies every REPLY_PULL_INTERVAL_S.

        An error the SuperLink writes itself for a message it no longer holds (its node was
        unregistered: a revoked site) comes from the SuperLink's own node id; it is given the
        node the message went to, so that the node counts once, as its site's failed client.
        """
        messages = self._for_their_sites(messages)
        pushed = list(self.grid.push_messages(messages))
        sent_to = {
            message_id: message.metadata.dst_node_id
            for message_id, message in zip(pushed, messages, strict=False)
            if message_id
        }
        waiting = set(sent_to)
        deadline = time.monotonic() + (timeout or 0.0)
        replies: list[Message] = []
        while waiting and (timeout is None or time.monotonic() < deadline):
            arrived = list(self.grid.pull_messages(waiting))
            for reply in arrived:
                node = sent_to.get(reply.metadata.reply_to_message_id)
                if node is not None and reply.has_error():
                    reply.metadata.__dict__["_src_node_id"] = node  # Flower's own way to set it
            replies.extend(arrived)
            waiting -= {reply.metadata.reply_to_message_id for reply in arrived}
            if waiting:
                time.sleep(REPLY_PULL_INTERVAL_S)
        return replies
