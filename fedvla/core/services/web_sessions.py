"""Dashboard sessions, kept on the server: the signed cookie carries only a session's key.

Signing out deletes the session's row, so a copy of the cookie taken before no longer works;
revoking a token deletes every session signed in with it (fedvla.core.services.tokens.revoke_token).
"""

import secrets
from datetime import timedelta

from sqlalchemy import delete
from sqlmodel import Session, col, select

from fedvla.core.models import ApiToken, WebSession, utcnow
from fedvla.core.security import hash_token

SESSION_LIFETIME = timedelta(hours=12)


def start(*, session: Session, token: ApiToken) -> str:
    """A new session for ``token``; returns its key (for the cookie), stored only as a hash."""
    assert token.id is not None
    now = utcnow()
    session.execute(delete(WebSession).where(col(WebSession.expires_at) <= now))
    key = secrets.token_urlsafe(32)
    session.add(
        WebSession(key_hash=hash_token(key), token_id=token.id, expires_at=now + SESSION_LIFETIME)
    )
    session.commit()
    return key


def signed_in_token(*, session: Session, key: str | None) -> ApiToken | None:
    """The live token of the live session with this key; None when either has ended."""
    if not key:
        return None
    query = (
        select(ApiToken)
        .join(WebSession, col(WebSession.token_id) == col(ApiToken.id))
        .where(
            WebSession.key_hash == hash_token(key),
            col(WebSession.expires_at) > utcnow(),
            col(ApiToken.revoked).is_(False),
        )
    )
    return session.exec(query).first()


def end(*, session: Session, key: str | None) -> None:
    """Signs the session out on the server: its cookie is refused from now on."""
    if key:
        session.execute(delete(WebSession).where(col(WebSession.key_hash) == hash_token(key)))
        session.commit()


def end_all_of(*, session: Session, token_id: int) -> None:
    """Deletes every session of the token; the caller commits (with the token's revocation)."""
    session.execute(delete(WebSession).where(col(WebSession.token_id) == token_id))
