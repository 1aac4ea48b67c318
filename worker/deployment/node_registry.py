"""The SuperLink admits exactly the approved sites: their public keys registered, others not.

Sites and nodes are matched by public key (the SuperLink stores the PEM we registered), so no
node id needs storing: a re-keyed site's old node is unregistered, its new key registered once
it is approved again.
"""

from dataclasses import dataclass, field

from sqlmodel import Session, select

from app.core.config import Settings
from app.core.public_keys import InvalidPublicKey, normalise_public_key
from app.models import Site, SiteStatus
from worker.deployment.superlink import (
    NodeStatus,
    list_nodes,
    register_node,
    unregister_node,
)

UNREGISTERED = "unregistered"


@dataclass
class SyncResult:
    registered: list[str] = field(default_factory=list)
    unregistered: list[int] = field(default_factory=list)
    needs_new_key: list[str] = field(default_factory=list)
    """Approved sites whose key was unregistered once: Flower never admits such a key again."""


def _key(pem: str) -> str | None:
    try:
        return normalise_public_key(pem)
    except InvalidPublicKey:
        return None


def live_nodes_by_key(settings: Settings) -> dict[str, NodeStatus]:
    """The SuperLink's registered nodes (not unregistered ones), by normalised public key."""
    found: dict[str, NodeStatus] = {}
    for node in list_nodes(settings):
        key = _key(node.public_key)
        if key is not None and node.status != UNREGISTERED:
            found[key] = node
    return found


def approved_sites_by_key(session: Session) -> dict[str, Site]:
    query = select(Site).where(Site.status == SiteStatus.approved)
    sites = {}
    for site in session.exec(query):
        key = _key(site.public_key or "")
        if key is not None:
            sites[key] = site
    return sites


def sync_registrations(session: Session, settings: Settings) -> SyncResult:
    """Register approved sites' keys, unregister every other node (revoked, re-keyed, unknown)."""
    result = SyncResult()
    nodes = live_nodes_by_key(settings)
    retired = {_key(n.public_key) for n in list_nodes(settings) if n.status == UNREGISTERED}
    wanted = approved_sites_by_key(session)
    for key, site in wanted.items():
        if key in retired and key not in nodes:
            result.needs_new_key.append(site.name)
        elif key not in nodes:
            register_node(settings, key, site.name)
            result.registered.append(site.name)
    for key, node in nodes.items():
        if key not in wanted:
            unregister_node(settings, node.node_id)
            result.unregistered.append(node.node_id)
    return result


def node_of(settings: Settings, site: Site) -> NodeStatus | None:
    """The site's node, if its key is registered."""
    key = _key(site.public_key or "")
    return None if key is None else live_nodes_by_key(settings).get(key)
