"""SuperNode authentication keys, in the formats flwr 1.42 expects.

A SuperNode signs its requests with an EC private key in OpenSSH format
(``flower-supernode --auth-supernode-private-key``); the SuperLink knows the node by the PEM
SubjectPublicKeyInfo of the public key (what ``flwr supernode register`` sends). Flower accepts
the NIST curves; we generate P-384, as Flower's documentation does. Which public keys the server
accepts is fedvla.core.public_keys.
"""

from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from fedvla.core.public_keys import public_pem

PRIVATE_KEY_FILE = "supernode.key"
PUBLIC_KEY_FILE = "supernode.pub"
PUBLIC_PEM_FILE = "supernode.pub.pem"
INTERPRETER_FILE = "interpreter"
"""Beside the keys: the Python that ran ``fedvla site keygen``, which the kit's supernode.sh runs
the site node with (so fedvla need not be on PATH)."""


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
