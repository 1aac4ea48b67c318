"""Checkpoints of a run, and their downloads.

A checkpoint is a lerobot pretrained_model folder. It is downloaded as one tar archive, built once
next to the folder (written under a temporary name, then renamed) with its sha256 in a sidecar
file, so that the same bytes are served to every client and a broken download can resume with an
HTTP range request.

Nothing is served on trust: before every download the weights are hashed and compared with the
sha256 the database recorded when the checkpoint was saved, the weights packed into an archive are
hashed as they are packed, and a cached archive is compared with its sidecar. Weights that are
gone or differ answer 410 and leave an event on the run saying what was wrong.
"""

import hashlib
import os
import tarfile
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from sqlmodel import Session, col, select

from fedvla.core.errors import Gone, NotFound
from fedvla.core.models import Checkpoint, RunEvent
from fedvla.core.services.events import EventPublisher, append_event

WEIGHTS_FILE = "model.safetensors"
_CHUNK = 1024 * 1024


@dataclass(frozen=True)
class Download:
    path: Path
    sha256: str
    filename: str


class CheckpointFilesGone(Gone):
    def __init__(self, path: Path) -> None:
        super().__init__(f"The checkpoint's files are no longer on disk ({path.name})")


class CheckpointCorrupt(Gone):
    def __init__(self) -> None:
        super().__init__(
            f"The checkpoint's {WEIGHTS_FILE} no longer matches its recorded sha256 (corrupt)"
        )


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


def _report_once(
    session: Session,
    publisher: EventPublisher,
    checkpoint: Checkpoint,
    message: str,
    **data: object,
) -> None:
    """An event on the run about a damaged checkpoint; the first download that finds it says so."""
    said = select(RunEvent.id).where(
        RunEvent.run_id == checkpoint.run_id, RunEvent.message == message
    )
    if session.exec(said).first() is not None:
        return
    event = append_event(
        session, checkpoint.run_id, "checkpoint", message, {"round": checkpoint.round, **data}
    )
    session.commit()
    publisher.publish([event])


def _verified_weights(session: Session, publisher: EventPublisher, checkpoint: Checkpoint) -> Path:
    """The weights file, after checking that it is there and has the recorded sha256."""
    folder = Path(checkpoint.path)
    weights = folder / WEIGHTS_FILE
    round_ = checkpoint.round
    if not weights.is_file():
        _report_once(
            session,
            publisher,
            checkpoint,
            f"checkpoint of round {round_} is missing on disk: its {WEIGHTS_FILE} is gone",
            missing=True,
        )
        raise CheckpointFilesGone(folder)
    actual = file_sha256(weights)
    if actual != checkpoint.sha256:
        _report_once(
            session,
            publisher,
            checkpoint,
            f"checkpoint of round {round_} is corrupt on disk: {WEIGHTS_FILE} has sha256 "
            f"{actual}, recorded {checkpoint.sha256}",
            corrupt=True,
            expected_sha256=checkpoint.sha256,
            actual_sha256=actual,
        )
        raise CheckpointCorrupt()
    return weights


def weights_download(
    session: Session, publisher: EventPublisher, checkpoint: Checkpoint
) -> Download:
    path = _verified_weights(session, publisher, checkpoint)
    name = f"run-{checkpoint.run_id}-round-{checkpoint.round}-{WEIGHTS_FILE}"
    return Download(path, checkpoint.sha256, name)


def archive_download(
    session: Session, publisher: EventPublisher, checkpoint: Checkpoint
) -> Download:
    """The pretrained_model folder as a tar archive (built on first request) and its sha256."""
    folder = _verified_weights(session, publisher, checkpoint).parent
    archive = folder.with_name(folder.name + ".tar")
    digest_file = archive.with_name(archive.name + ".sha256")
    digest = _cached_archive_digest(archive, digest_file)
    if digest is None:
        if not _build_archive(folder, archive, digest_file, checkpoint.sha256):
            raise CheckpointCorrupt()  # changed on disk between the check and the packing
        digest = digest_file.read_text().strip()
    name = f"run-{checkpoint.run_id}-round-{checkpoint.round}-{folder.name}.tar"
    return Download(archive, digest, name)


def _cached_archive_digest(archive: Path, digest_file: Path) -> str | None:
    """The sha256 of an archive built before, if the archive still has it; else None."""
    if not (archive.is_file() and digest_file.is_file()):
        return None
    digest = digest_file.read_text().strip()
    return digest if file_sha256(archive) == digest else None


class _HashingReader:
    """Hashes what tarfile reads from a file while it packs it."""

    def __init__(self, handle: IO[bytes]) -> None:
        self.handle = handle
        self.digest = hashlib.sha256()

    def read(self, size: int = -1) -> bytes:
        data = self.handle.read(size)
        self.digest.update(data)
        return data


def _build_archive(folder: Path, archive: Path, digest_file: Path, weights_sha256: str) -> bool:
    """Packs the folder; False (and nothing written) if the weights packed lack the recorded
    sha256. Concurrent builders each write their own temporary files; the renames are atomic."""
    suffix = f".{uuid.uuid4().hex}.tmp"
    tmp_archive = archive.with_name(archive.name + suffix)
    tmp_digest = digest_file.with_name(digest_file.name + suffix)
    packed_weights = ""
    try:
        with tarfile.open(tmp_archive, "w", format=tarfile.PAX_FORMAT) as tar:
            for path in sorted(folder.rglob("*")):
                info = tar.gettarinfo(path, arcname=f"{folder.name}/{path.relative_to(folder)}")
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                if info.isfile():
                    with path.open("rb") as handle:
                        reader = _HashingReader(handle)
                        tar.addfile(info, reader)
                    if path == folder / WEIGHTS_FILE:
                        packed_weights = reader.digest.hexdigest()
                else:
                    tar.addfile(info)
        if packed_weights != weights_sha256:
            return False
        tmp_digest.write_text(file_sha256(tmp_archive) + "\n")
        os.replace(tmp_digest, digest_file)
        os.replace(tmp_archive, archive)
        return True
    finally:
        tmp_archive.unlink(missing_ok=True)
        tmp_digest.unlink(missing_ok=True)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()
