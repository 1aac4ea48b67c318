"""A site's node as the SuperLink sees it: registered, online, last seen."""

from pydantic import BaseModel, Field

from app.core.config import Settings
from app.core.errors import Unavailable
from app.models import Site
from app.schemas.common import UtcDatetime
from worker.deployment import node_registry
from worker.deployment.superlink import SuperLinkError


class SiteNode(BaseModel):
    site_id: int
    superlink: str = Field(description="The SuperLink's address, as sites dial it.")
    registered: bool = Field(description="The site's public key is registered with the SuperLink.")
    node_id: int | None = None
    status: str = Field(
        examples=["online"], description="online | offline | registered | not registered"
    )
    online: bool
    last_seen: UtcDatetime | None = Field(None, description="When the node last connected.")
    online_until: float | None = Field(None, description="Heartbeat deadline, Unix seconds.")


def site_node(settings: Settings, site: Site) -> SiteNode:
    """503 when the SuperLink does not answer."""
    assert site.id is not None
    try:
        node = node_registry.node_of(settings, site)
    except SuperLinkError as error:
        raise Unavailable(
            f"The SuperLink at {settings.superlink_address} does not answer: {error}"
        ) from None
    if node is None:
        return SiteNode(
            site_id=site.id,
            superlink=settings.superlink_address,
            registered=False,
            status="not registered",
            online=False,
        )
    return SiteNode(
        site_id=site.id,
        superlink=settings.superlink_address,
        registered=True,
        node_id=node.node_id,
        status=node.status,
        online=node.online,
        last_seen=node.last_activated_at or None,
        online_until=node.online_until or None,
    )
