"""API tokens: creation (the secret is returned once), lookup, revocation."""

from datetime import timedelta

from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, func, select

from fedvla.core.errors import Conflict, InvalidFields, NotFound
from fedvla.core.models import ApiToken, Role, Site, utcnow
from fedvla.core.names import checked_name
from fedvla.core.security import display_prefix, generate_token, hash_token, token_matches
from fedvla.core.services import web_sessions

LAST_USED_RESOLUTION = timedelta(seconds=60)
"""last_used_at is written at most this often per token, so reads do not all become writes."""

ADMIN_TOKEN_NAME = "admin"


def create_token(
    *, session: Session, name: str, role: Role, site_id: int | None = None
) -> tuple[ApiToken, str]:
    """A new token and its secret; the secret is not stored and cannot be shown again.

    An operator token without a site is an enrolment token: it may register one site, which it
    then belongs to (fedvla.core.services.sites.register_site).
    """
    name = checked_name(name)
    if role != Role.operator and site_id is not None:
        raise InvalidFields.one("site_id", "only operator tokens belong to a site")
    if site_id is not None and session.get(Site, site_id) is None:
        raise InvalidFields.one("site_id", f"no site with id {site_id}")
    secret = generate_token()
    token = ApiToken(
        name=name,
        role=role,
        site_id=site_id,
        token_hash=hash_token(secret),
        prefix=display_prefix(secret),
    )
    session.add(token)
    try:
        session.commit()
    except IntegrityError:
        session.rollback()
        raise Conflict(
            f"A token named '{name}' already exists", field="name", reason="already in use"
        ) from None
    session.refresh(token)
    return token, secret


def authenticate(*, session: Session, secret: str) -> ApiToken | None:
    """The live token whose secret this is, with its last use recorded; None otherwise."""
    token_hash = hash_token(secret)
    token = session.exec(select(ApiToken).where(ApiToken.token_hash == token_hash)).first()
    if token is None or token.revoked or not token_matches(secret, token.token_hash):
        return None
    now = utcnow()
    last = token.last_used_at
    if last is not None and last.tzinfo is None:  # SQLite hands back naive UTC
        last = last.replace(tzinfo=now.tzinfo)
    if last is None or now - last >= LAST_USED_RESOLUTION:
        token.last_used_at = now
        session.add(token)
        session.commit()
        session.refresh(token)
    return token


def list_tokens(
    *, session: Session, offset: int = 0, limit: int = 100
) -> tuple[list[ApiToken], int]:
    count = session.exec(select(func.count()).select_from(ApiToken)).one()
    rows = session.exec(select(ApiToken).order_by(col(ApiToken.id)).offset(offset).limit(limit))
    return list(rows), count


def get_token(*, session: Session, token_id: int) -> ApiToken:
    token = session.get(ApiToken, token_id)
    if token is None:
        raise NotFound("Token")
    return token


def get_token_by_name(*, session: Session, name: str) -> ApiToken:
    token = session.exec(select(ApiToken).where(ApiToken.name == name)).first()
    if token is None:
        raise NotFound("Token")
    return token


def revoke_token(*, session: Session, token: ApiToken) -> ApiToken:
    """Refused from now on, with every dashboard session signed in with it; the row stays so
    that lists show who had access. Open event streams notice within CREDENTIAL_CHECK_S."""
    mark_revoked(session=session, token=token)
    session.commit()
    session.refresh(token)
    return token


def mark_revoked(*, session: Session, token: ApiToken) -> None:
    """Revokes the token and ends its dashboard sessions; the caller commits."""
    assert token.id is not None
    token.revoked = True
    session.add(token)
    web_sessions.end_all_of(session=session, token_id=token.id)


def has_live_admin(*, session: Session) -> bool:
    query = select(ApiToken.id).where(ApiToken.role == Role.admin, col(ApiToken.revoked).is_(False))
    return session.exec(query).first() is not None


def ensure_admin(*, session: Session) -> str | None:
    """Creates the first admin token and returns its secret; None when a live admin exists."""
    if has_live_admin(session=session):
        return None
    name = ADMIN_TOKEN_NAME
    existing = session.exec(select(ApiToken).where(ApiToken.name == name)).first()
    if existing is not None:  # "admin" was revoked: keep its row, name the new one apart
        name = f"{ADMIN_TOKEN_NAME}-{utcnow():%Y%m%d%H%M%S}"
    _, secret = create_token(session=session, name=name, role=Role.admin)
    return secret
