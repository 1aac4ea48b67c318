"""API token secrets and site public keys."""

import hashlib
import hmac
import secrets

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
