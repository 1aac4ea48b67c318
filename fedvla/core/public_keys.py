"""The public keys a site may register: EC keys on a NIST curve, the ones Flower 1.42's SuperNode
authentication accepts, stored as the PEM SubjectPublicKeyInfo the SuperLink knows a node by.
"""

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

NIST_CURVES = (ec.SECP256R1, ec.SECP384R1, ec.SECP521R1)


class InvalidPublicKey(ValueError):
    """Not a public key a SuperNode can authenticate with; the message says why."""


def parse_public_key(text: str) -> ec.EllipticCurvePublicKey:
    """A PEM (or OpenSSH one-line) EC public key on a NIST curve; InvalidPublicKey says why not."""
    data = text.strip().encode()
    try:
        if data.startswith(b"-----BEGIN"):
            key = serialization.load_pem_public_key(data)
        else:
            key = serialization.load_ssh_public_key(data)
    except (ValueError, TypeError, UnsupportedAlgorithm) as error:
        raise InvalidPublicKey(
            f"not a PEM public key (nor an OpenSSH one): {error}".rstrip(": ")
        ) from None
    if not isinstance(key, ec.EllipticCurvePublicKey):
        kind = type(key).__name__.removeprefix("_").replace("PublicKey", "")
        raise InvalidPublicKey(
            f"a {kind} key; Flower SuperNode authentication needs an EC key on a NIST curve "
            "(P-384: run 'fedvla site keygen')"
        )
    if not isinstance(key.curve, NIST_CURVES):
        raise InvalidPublicKey(
            f"EC curve {key.curve.name} is not one Flower accepts (use P-384: 'fedvla site keygen')"
        )
    return key


def public_pem(key: ec.EllipticCurvePublicKey) -> str:
    """The SubjectPublicKeyInfo PEM: what we store and register with the SuperLink."""
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()


def normalise_public_key(text: str) -> str:
    """The key as PEM, whichever accepted format it came in."""
    return public_pem(parse_public_key(text))
