"""A Grid that shows the ServerApp only the nodes of the experiment's sites.

A SuperLink admits every approved site; a run must train only on the sites of its experiment.
A site's node id changes when it re-keys (its new key is registered once it is approved
again), so the SuperLink's node list, matched to the sites' public keys, is read again every
REFRESH_S; which sites are approved is read from the database at each round's sampling and
whenever updates arrive: a site revoked mid-run is not sampled again, and an update it sends
after the revocation is not averaged.

Each message it sends carries its site's camera map (the site's cameras renamed to the
experiment's), computed when the run starts from the sites as the database holds them then, not
from the startup kit, which may predate the experiment.

It also looks for replies every REPLY_PULL_INTERVAL_S, where Flower's grid sleeps 3 s between
looks (on average 1.5 s added to every round), and pulls their arrays with a shorter backoff
(fedvla.engine.federation.transport.pull_objects_sooner), and pushes a message's objects 8 at a
time, not 2 (push_objects_wider). What each exchange of messages cost goes to the ServerApp's log
(exchange_log).
"""

import logging
import time
from collections.abc import Callable, Iterable, Mapping

from flwr.app import Error, Message
from flwr.common.constant import ErrorCode
from flwr.serverapp import Grid
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import Session, col, select

from fedvla.core.config import Settings
from fedvla.core.db import make_engine
from fedvla.core.models import Site, SiteStatus
from fedvla.core.services import compatibility
from fedvla.engine.federation.protocol import with_camera_map
from fedvla.engine.federation.streaming_grid import StreamingGrid
from fedvla.engine.federation.transport import pull_objects_sooner, push_objects_wider
from fedvla.engine.federation.wrapped_grid import WrappedGrid
from fedvla.orchestration.deployment.exchange_log import ExchangeLog
from fedvla.sites.node_registry import nodes_of_sites
from fedvla.sites.superlink import SuperLinkError, list_nodes

logger = logging.getLogger(__name__)

REFRESH_S = 2.0
"""How often the SuperLink's node list is read again (a re-keyed site's new node shows then)."""
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


def approved_sites(engine: Engine, site_ids: list[int]) -> set[str]:
    """The names of the experiment's sites approved now (the database says at once that a site
    was revoked; the SuperLink unregisters its node only at the next sync)."""
    query = select(Site.name).where(col(Site.id).in_(site_ids), Site.status == SiteStatus.approved)
    with Session(engine) as session:
        return set(session.exec(query))


def experiment_camera_maps(settings: Settings, site_ids: list[int]) -> dict[str, dict[str, str]]:
    """Site name -> its cameras renamed to the experiment's reference site's ({} if they agree)."""
    sites = experiment_sites(settings, site_ids)
    return {site.name: compatibility.cameras_renamed_for(site, sites) or {} for site in sites}


class ExperimentGrid(WrappedGrid):
    """Delegates to Flower's grid; ``get_node_ids`` answers only the allowed nodes.

    A node is allowed when ``nodes`` (node id -> site name: the experiment's sites' registered
    nodes, read from the SuperLink at most every ``refresh_s``) names a site that ``approved``
    (the site names approved now, read from the database) holds. ``approved`` is read afresh at
    each ``get_node_ids`` (a round's sampling) and whenever updates arrive, so a site revoked
    while a round runs is not sampled again, and its update of that round, arriving after the
    revocation, is that round's failed client, not averaged. When a read fails (the SuperLink
    or the database away for a moment) the last answer stands.
    """

    def __init__(
        self,
        grid: Grid,
        nodes: Callable[[], dict[int, str]],
        approved: Callable[[], set[str]],
        refresh_s: float = REFRESH_S,
        camera_maps: Mapping[str, dict[str, str]] | None = None,
    ) -> None:
        from flwr.superlink.grid import http_grid

        pull_objects_sooner(http_grid)  # this ServerApp process's grid pulls replies sooner
        push_objects_wider(http_grid)  # and pushes a train message's objects 8 at a time
        super().__init__(grid)
        self.nodes = nodes
        self.approved = approved
        self.refresh_s = refresh_s
        self.camera_maps = dict(camera_maps or {})
        self.names: dict[int, str] = {}
        """The experiment's sites' nodes seen in this run (a revoked site's keeps its name)."""
        self.approved_now: set[str] = set()
        self.sent_to: dict[str, int] = {}
        """Message id -> the node it went to, until its reply is pulled."""
        self.exchanges = ExchangeLog(logger.info)
        self._nodes_read_at: float | None = None
        self._approved_read = False

    def _read_nodes(self) -> dict[int, str]:
        now = time.monotonic()
        if self._nodes_read_at is None or now - self._nodes_read_at >= self.refresh_s:
            try:
                self.names.update(self.nodes())
            except (SuperLinkError, OSError):
                if self._nodes_read_at is None:
                    raise
            self._nodes_read_at = now
        return self.names

    def _read_approved(self) -> set[str]:
        try:
            self.approved_now = self.approved()
        except (SQLAlchemyError, OSError):
            if not self._approved_read:
                raise
        self._approved_read = True
        return self.approved_now

    def _allowed(self) -> set[int]:
        names, approved = self._read_nodes(), self._read_approved()
        return {node for node, site in names.items() if site in approved}

    def node_name(self, node: int) -> str | None:
        """The site name of a node of the experiment's sites (allowed now or earlier)."""
        return self._read_nodes().get(node)

    def get_node_ids(self) -> Iterable[int]:
        allowed = self._allowed()
        return [node for node in self.grid.get_node_ids() if node in allowed]

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        messages = list(messages)
        for message in messages:
            name = self.node_name(message.metadata.dst_node_id)
            if name is not None and name in self.camera_maps:
                with_camera_map(message, self.camera_maps[name])
        started = time.perf_counter()
        pushed = list(self.grid.push_messages(messages))
        if messages:  # Flower pushes none for a step that samples no node (no evaluation)
            kind = messages[0].metadata.message_type
            self.exchanges.pushed(kind, sum(1 for message_id in pushed if message_id), started)
        for message_id, message in zip(pushed, messages, strict=False):
            if message_id:
                self.sent_to[message_id] = message.metadata.dst_node_id
        return pushed

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        """Flower's replies, each from the node its message went to, and none from a site no
        longer allowed.

        An error the SuperLink writes itself for a message it no longer holds (its node was
        unregistered: a revoked site) comes from the SuperLink's own node id; it is given the
        node the message went to, so that the node counts once, as its site's failed client.
        """
        started = time.perf_counter()
        replies = list(self.grid.pull_messages(message_ids))
        self.exchanges.pulled(started, len(replies))
        updates = any(not reply.has_error() for reply in replies)
        allowed = self._allowed() if updates else set()
        checked = []
        for reply in replies:
            node = self.sent_to.pop(reply.metadata.reply_to_message_id, None)
            if node is None:
                checked.append(reply)
            elif reply.has_error():
                reply.metadata.__dict__["_src_node_id"] = node  # Flower's own way to set it
                checked.append(reply)
            elif node not in allowed:
                checked.append(_refused(reply, self.names.get(node, f"node {node}")))
            else:
                checked.append(reply)
        return checked

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        """Flower's send_and_receive through this grid's push and pull, looking for the replies
        every REPLY_PULL_INTERVAL_S."""
        streaming = StreamingGrid(self, REPLY_PULL_INTERVAL_S)
        return list(streaming.send_and_receive(messages, timeout=timeout))


def _refused(reply: Message, site: str) -> Message:
    """The reply of a site that was revoked (or re-keyed) while its message was out, as an error:
    what it sent is dropped, unread."""
    reason = f"site {site!r} is no longer approved: its reply was not used"
    error = Error(code=ErrorCode.NODE_UNAVAILABLE, reason=reason)
    # Keeps the reply's metadata: Flower builds a pulled message the same way (message.py).
    return Message(metadata=reply.metadata, error=error)  # type: ignore[call-overload]
