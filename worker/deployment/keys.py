"""SuperNode authentication keys, in the formats flwr 1.42 expects.

A SuperNode signs its requests with an EC private key in OpenSSH format
(``flower-supernode --auth-supernode-private-key``); the SuperLink knows the node by the PEM
SubjectPublicKeyInfo of the public key (what ``flwr supernode register`` sends). Flower accepts
the NIST curves; we generate P-384, as Flower's documentation does.
"""

from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

NIST_CURVES = (ec.SECP256R1, ec.SECP384R1, ec.SECP521R1)
PRIVATE_KEY_FILE = "supernode.key"
PUBLIC_KEY_FILE = "supernode.pub"
PUBLIC_PEM_FILE = "supernode.pub.pem"


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


@dataclass(frozen=True)
class NodeKeyFiles:
    private_key: Path
    public_key: Path
    public_pem: Path


def generate_node_keys(directory: Path, *, overwrite: bool = False) -> NodeKeyFiles:
    """A P-384 key pair for a SuperNode, written into ``directory``; the private key 0600.

    Refuses (FileExistsError) to replace an existing private key unless ``overwrite``: a new key
    means the site must be approved again.
    """
    files = NodeKeyFiles(
        directory / PRIVATE_KEY_FILE, directory / PUBLIC_KEY_FILE, directory / PUBLIC_PEM_FILE
    )
    if files.private_key.exists() and not overwrite:
        raise FileExistsError(f"{files.private_key} exists; pass --force to replace it")
    directory.mkdir(parents=True, exist_ok=True)
    private = ec.generate_private_key(ec.SECP384R1())
    openssh = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    files.private_key.touch(mode=0o600, exist_ok=True)
    files.private_key.chmod(0o600)
    files.private_key.write_bytes(openssh)
    public = private.public_key()
    files.public_key.write_bytes(
        public.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        + b"\n"
    )
    files.public_pem.write_text(public_pem(public))
    return files
