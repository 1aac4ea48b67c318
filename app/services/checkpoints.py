"""Checkpoints of a run, and their downloads.

A checkpoint is a lerobot pretrained_model folder. It is downloaded as one tar archive, built once
next to the folder (written under a temporary name, then renamed) with its sha256 in a sidecar
file, so that the same bytes are served to every client and a broken download can resume with an
HTTP range request.
"""

import hashlib
import os
import tarfile
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from sqlmodel import Session, col, select

from app.core.errors import ApiError, NotFound
from app.models import Checkpoint

WEIGHTS_FILE = "model.safetensors"
_CHUNK = 1024 * 1024


@dataclass(frozen=True)
class Download:
    path: Path
    sha256: str
    filename: str


class CheckpointFilesGone(ApiError):
    def __init__(self, path: Path) -> None:
        super().__init__(410, f"The checkpoint's files are no longer on disk ({path.name})")


def list_checkpoints(session: Session, run_id: int) -> Sequence[Checkpoint]:
    return session.exec(
        select(Checkpoint).where(Checkpoint.run_id == run_id).order_by(col(Checkpoint.round))
    ).all()


def get_checkpoint(session: Session, run_id: int, round: int) -> Checkpoint:
    checkpoint = session.exec(
        select(Checkpoint).where(Checkpoint.run_id == run_id, Checkpoint.round == round)
    ).first()
    if checkpoint is None:
        raise NotFound("Checkpoint")
    return checkpoint


def _folder(checkpoint: Checkpoint) -> Path:
    folder = Path(checkpoint.path)
    if not (folder / WEIGHTS_FILE).is_file():
        raise CheckpointFilesGone(folder)
    return folder


def weights_download(checkpoint: Checkpoint) -> Download:
    path = _folder(checkpoint) / WEIGHTS_FILE
    name = f"run-{checkpoint.run_id}-round-{checkpoint.round}-{WEIGHTS_FILE}"
    return Download(path, checkpoint.sha256, name)


def archive_download(checkpoint: Checkpoint) -> Download:
    """The pretrained_model folder as a tar archive (built on first request) and its sha256."""
    folder = _folder(checkpoint)
    archive = folder.with_name(folder.name + ".tar")
    digest_file = archive.with_name(archive.name + ".sha256")
    if not (archive.is_file() and digest_file.is_file()):
        _build_archive(folder, archive, digest_file)
    name = f"run-{checkpoint.run_id}-round-{checkpoint.round}-{folder.name}.tar"
    return Download(archive, digest_file.read_text().strip(), name)


def _build_archive(folder: Path, archive: Path, digest_file: Path) -> None:
    """Concurrent builders each write their own temporary files; the renames are atomic."""
    suffix = f".{uuid.uuid4().hex}.tmp"
    tmp_archive = archive.with_name(archive.name + suffix)
    tmp_digest = digest_file.with_name(digest_file.name + suffix)
    try:
        with tarfile.open(tmp_archive, "w", format=tarfile.PAX_FORMAT) as tar:
            for path in sorted(folder.rglob("*")):
                info = tar.gettarinfo(path, arcname=f"{folder.name}/{path.relative_to(folder)}")
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                if info.isfile():
                    with path.open("rb") as handle:
                        tar.addfile(info, handle)
                else:
                    tar.addfile(info)
        tmp_digest.write_text(file_sha256(tmp_archive) + "\n")
        os.replace(tmp_digest, digest_file)
        os.replace(tmp_archive, archive)
    finally:
        tmp_archive.unlink(missing_ok=True)
        tmp_digest.unlink(missing_ok=True)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()
