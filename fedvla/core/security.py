"""API token secrets, the session-signing key, and the hashes they are stored as."""

import hashlib
import hmac
import logging
import os
import secrets
from pathlib import Path

from fedvla.core.config import Settings

log = logging.getLogger(__name__)

TOKEN_PREFIX = "fvla_"
DISPLAY_PREFIX_LENGTH = 12


def generate_token() -> str:
    """A new secret: shown once to its owner, stored only as its hash."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def display_prefix(token: str) -> str:
    """The first characters of a secret, enough to recognise it in a list."""
    return token[:DISPLAY_PREFIX_LENGTH]


def token_matches(token: str, token_hash: str) -> bool:
    """Constant-time comparison of a presented secret with a stored hash."""
    return hmac.compare_digest(hash_token(token), token_hash)


def session_secret_key(settings: Settings) -> str:
    """The key that signs session cookies: FEDVLA_SECRET_KEY, else the key generated into
    ``settings.secret_key_file`` (mode 0600) by the first start and read by every later one.

    Several processes may start at once: each writes a key to a file of its own and hard-links it
    into place, which fails for all but the first, and every one then reads the winner's key.
    """
    if settings.secret_key:
        return settings.secret_key
    path = settings.secret_key_file
    if not path.exists():
        _write_new_key(path)
    key = path.read_text().strip()
    if not key:
        raise RuntimeError(f"{path} is empty; delete it, or set FEDVLA_SECRET_KEY")
    return key


def _write_new_key(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    draft = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    descriptor = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(descriptor, "w") as handle:
            handle.write(secrets.token_urlsafe(48) + "\n")
        os.link(draft, path)
        log.warning("FEDVLA_SECRET_KEY is not set: generated a session key into %s", path)
    except FileExistsError:
        pass  # another process was first; its key is the one
    finally:
        draft.unlink()
