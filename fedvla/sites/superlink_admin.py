"""A site's node as the SuperLink sees it: its state, its last heartbeat, why it was refused."""

from pydantic import BaseModel, Field

from fedvla.core.config import Settings
from fedvla.core.errors import Unavailable
from fedvla.core.models import Site
from fedvla.core.schemas.common import UtcDatetime
from fedvla.sites import node_registry
from fedvla.sites.superlink import SuperLinkError, list_nodes, log_path

HINTS = {
    node_registry.KEY_NEEDED: "The SuperLink never admits a key it has unregistered (a revoke "
    "or a re-key does that): generate a new key pair at the site (fedvla site keygen --force) "
    "and register its public key; the site is then approved again.",
    node_registry.NO_KEY: "No public key registered: generate one at the site "
    "(fedvla site keygen) and register it.",
}


class SiteNode(BaseModel):
    site_id: int
    superlink: str = Field(description="The SuperLink's address, as sites dial it.")
    registered: bool = Field(description="The site's public key is registered with the SuperLink.")
    node_id: int | None = None
    status: str = Field(
        examples=["online"],
        description="online | offline | registered (key registered, node never connected) | "
        "key needed (approved, but the SuperLink refuses this key for good: register a new "
        "one) | not registered (not approved yet, or not synced yet) | no key",
    )
    online: bool
    last_seen: UtcDatetime | None = Field(
        None, description="The node's last heartbeat to the SuperLink."
    )
    online_until: float | None = Field(None, description="Heartbeat deadline, Unix seconds.")
    hint: str | None = Field(None, description="What the operator should do, when anything.")
    refused: str | None = Field(
        None,
        description="Why the SuperLink last refused a node with this site's key, from its log "
        "(e.g. 'No SuperNode found with the given public key.'); null if its log shows none.",
    )
    refused_at: UtcDatetime | None = None


def site_node(settings: Settings, site: Site) -> SiteNode:
    """503 when the SuperLink does not answer."""
    assert site.id is not None
    try:
        nodes = list_nodes(settings)
    except SuperLinkError as error:
        raise Unavailable(
            f"The SuperLink at {settings.superlink_address} does not answer: {error}"
        ) from None
    status, node = node_registry.node_state(site, nodes)
    key = node_registry.key_of(site)
    refusal = None
    if key is not None and (node is None or not node.online):
        log = node_registry.read_log_tail(log_path(settings))
        refusal = node_registry.refusals_in_log(log).get(key)
    return SiteNode(
        site_id=site.id,
        superlink=settings.superlink_address,
        registered=node is not None,
        node_id=None if node is None else node.node_id,
        status=status,
        online=node is not None and node.online,
        last_seen=None if node is None else node_registry.last_heartbeat(node),
        online_until=None if node is None else node.online_until or None,
        hint=HINTS.get(status),
        refused=None if refusal is None else refusal.reason,
        refused_at=None if refusal is None else refusal.at,
    )
