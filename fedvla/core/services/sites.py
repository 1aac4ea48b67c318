"""Sites: registration, edits, and the audited approve / revoke decisions."""

from sqlalchemy import update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm.exc import StaleDataError
from sqlmodel import Session, col, func, select

from fedvla.core.errors import Conflict, Forbidden, NotFound, reject_nul_characters
from fedvla.core.models import ApiToken, Role, Site, SiteAudit, SiteStatus, utcnow
from fedvla.core.schemas.sites import SiteCreate, SiteUpdate
from fedvla.core.services import tokens as token_service


def _save(*, session: Session, site: Site) -> Site:
    try:
        session.commit()
    except StaleDataError:  # deleted by another request since this one read it
        session.rollback()
        raise NotFound("Site") from None
    except IntegrityError:
        session.rollback()
        raise Conflict(
            f"A site named '{site.name}' already exists", field="name", reason="already in use"
        ) from None
    session.refresh(site)
    return site


def _refuse_duplicate_name(*, session: Session, name: str, own_id: int | None = None) -> None:
    existing = session.exec(select(Site.id).where(Site.name == name)).first()
    if existing is not None and existing != own_id:
        raise Conflict(
            f"A site named '{name}' already exists", field="name", reason="already in use"
        )


def _audit(*, session: Session, site: Site, action: str, actor: str, reason: str) -> None:
    assert site.id is not None
    session.add(
        SiteAudit(site_id=site.id, site_name=site.name, action=action, actor=actor, reason=reason)
    )


def check_can_register(token: ApiToken) -> None:
    """Admins register sites; an operator token without a site (an enrolment token) its own one."""
    if token.role == Role.admin or (token.role == Role.operator and token.site_id is None):
        return
    if token.role == Role.operator:
        raise Forbidden(
            f"This operator token belongs to site {token.site_id} already and may not register"
            " another; ask an admin for a new operator token without a site"
        )
    raise Forbidden("Needs the admin role, or an operator token without a site")


def register_site(*, session: Session, data: SiteCreate, token: ApiToken) -> Site:
    """A site registered by an admin, or by an operator's enrolment token, which it binds."""
    check_can_register(token)
    operator = token if token.role == Role.operator else None
    site = create_site(session=session, data=data, actor=token.name, bind=operator)
    if operator is not None:
        session.refresh(operator)
    return site


def create_site(
    *, session: Session, data: SiteCreate, actor: str, bind: ApiToken | None = None
) -> Site:
    """A pending site; ``bind``, a token without a site, gets it in the same transaction."""
    fields = data.model_dump(mode="json")
    reject_nul_characters(fields)
    _refuse_duplicate_name(session=session, name=data.name)
    site = Site(**fields)
    session.add(site)
    session.flush()
    _audit(session=session, site=site, action="register", actor=actor, reason="")
    if bind is not None:
        _bind(session=session, token=bind, site=site)
    return _save(session=session, site=site)


def _bind(*, session: Session, token: ApiToken, site: Site) -> None:
    """Sets the token's site only if it still has none, so two registrations at once give one."""
    bound = session.exec(
        update(ApiToken)
        .where(col(ApiToken.id) == token.id, col(ApiToken.site_id).is_(None))
        .values(site_id=site.id)
    )
    if bound.rowcount != 1:
        session.rollback()
        raise Conflict("This operator token has registered a site already")


def get_site(*, session: Session, site_id: int) -> Site:
    site = session.get(Site, site_id)
    if site is None:
        raise NotFound("Site")
    return site


def list_sites(
    *, session: Session, token: ApiToken, offset: int = 0, limit: int = 50
) -> tuple[list[Site], int]:
    """Every site for admins and viewers; an operator's own site only."""
    query = select(Site)
    if token.role == Role.operator:
        query = query.where(Site.id == token.site_id)
    count = session.exec(select(func.count()).select_from(query.subquery())).one()
    rows = session.exec(query.order_by(col(Site.id)).offset(offset).limit(limit))
    return list(rows), count


def update_site(*, session: Session, site: Site, data: SiteUpdate, actor: str) -> Site:
    changes = data.model_dump(mode="json", exclude_unset=True)
    reject_nul_characters(changes)
    for required in ("name", "dataset", "features"):
        if required in changes and changes[required] is None:
            changes.pop(required)
    if "name" in changes:
        _refuse_duplicate_name(session=session, name=changes["name"], own_id=site.id)
    key_changed = "public_key" in changes and changes["public_key"] != site.public_key
    for field, value in changes.items():
        setattr(site, field, value)
    if key_changed and site.status == SiteStatus.approved:
        site.status = SiteStatus.pending
        site.status_reason = "public key changed; approve again"
        site.approved_at = None
        _audit(session=session, site=site, action="rekey", actor=actor, reason=site.status_reason)
    session.add(site)
    return _save(session=session, site=site)


def set_status(
    *, session: Session, site: Site, status: SiteStatus, actor: str, reason: str
) -> Site:
    """Approve or revoke a site, with an audit row saying who did it and why."""
    reject_nul_characters({"reason": reason})
    if site.status == status:
        raise Conflict(f"Site is already {status.value}")
    now = utcnow()
    site.status = status
    site.status_reason = reason
    if status == SiteStatus.approved:
        site.approved_at, site.revoked_at = now, None
    elif status == SiteStatus.revoked:
        site.revoked_at = now
    session.add(site)
    action = {SiteStatus.approved: "approve", SiteStatus.revoked: "revoke"}.get(status, "reset")
    _audit(session=session, site=site, action=action, actor=actor, reason=reason)
    return _save(session=session, site=site)


def audit_log(*, session: Session, site_id: int) -> list[SiteAudit]:
    query = select(SiteAudit).where(SiteAudit.site_id == site_id).order_by(col(SiteAudit.id))
    return list(session.exec(query))


def delete_site(*, session: Session, site: Site, actor: str) -> None:
    """Deletes the site. The record of who had access stays: its operator tokens are revoked
    (kept, no longer tied to a site) and its audit log is kept, ending with a "delete" row that
    names the tokens; the database sets their ``site_id`` to NULL."""
    tokens = list(session.exec(select(ApiToken).where(ApiToken.site_id == site.id)))
    for token in tokens:
        token_service.mark_revoked(session=session, token=token)
    names = ", ".join(token.name for token in tokens) or "none"
    _audit(session=session, site=site, action="delete", actor=actor, reason=f"tokens: {names}")
    session.flush()
    session.delete(site)
    session.commit()
