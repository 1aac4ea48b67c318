"""/runs/{id}/checkpoints: list, and download as one archive or the weights file alone."""

from typing import Any

from fastapi import APIRouter
from fastapi.responses import FileResponse

from fedvla.core.schemas.runs import CheckpointPublic, CheckpointsPublic
from fedvla.core.services import checkpoints as service
from fedvla.core.services import runs
from fedvla.core.services.checkpoints import Download
from fedvla.core.services.events import publisher_for
from fedvla.web.api.deps import ReaderToken, SessionDep, SettingsDep, in_threadpool
from fedvla.web.api.errors import error_responses
from fedvla.web.api.params import IdPath, RoundPath

router = APIRouter(
    prefix="/runs/{run_id}/checkpoints", tags=["checkpoints"], responses=error_responses(403)
)

SHA256_HEADER = "X-Checksum-SHA256"

_FILE_HEADERS = {
    SHA256_HEADER: {
        "description": "sha256 of the whole file (not of a range), to check the download",
        "required": True,
        "schema": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
    },
    "Content-Disposition": {
        "description": "attachment; filename=...",
        "schema": {"type": "string"},
    },
}


def _download_responses(media_type: str, description: str) -> dict[int | str, dict[str, Any]]:
    content = {media_type: {"schema": {"type": "string", "format": "binary"}}}
    return {
        200: {"description": description, "content": content, "headers": _FILE_HEADERS},
        206: {
            "description": "The requested byte range (resume a broken download with Range)",
            "content": content,
            "headers": _FILE_HEADERS,
        },
        416: {"description": "The range is outside the file"},
        **error_responses(410),
    }


def _file_response(download: Download, media_type: str) -> FileResponse:
    """Starlette's FileResponse answers Range / If-Range requests (206) and sends an ETag."""
    return FileResponse(
        download.path,
        media_type=media_type,
        filename=download.filename,
        headers={SHA256_HEADER: download.sha256},
    )


@router.get("", response_model=CheckpointsPublic)
@in_threadpool
def list_checkpoints(run_id: IdPath, session: SessionDep, token: ReaderToken) -> CheckpointsPublic:
    """The checkpoints the run kept (retention removes older ones), by round."""
    runs.get_run(session, run_id, token)
    rows = service.list_checkpoints(session, run_id)
    return CheckpointsPublic(
        data=[CheckpointPublic.model_validate(row) for row in rows], count=len(rows)
    )


@router.get(
    "/{round}/archive",
    response_class=FileResponse,
    responses=_download_responses("application/x-tar", "The pretrained_model folder, a tar"),
)
def download_archive(
    run_id: IdPath,
    round: RoundPath,
    session: SessionDep,
    settings: SettingsDep,
    token: ReaderToken,
) -> FileResponse:
    """The lerobot pretrained_model folder as a tar archive; the archive's sha256 is in the
    X-Checksum-SHA256 header. The weights are checked against their recorded sha256 first.
    Loads with ``SmolVLAPolicy.from_pretrained`` once extracted."""
    runs.get_run(session, run_id, token)
    checkpoint = service.get_checkpoint(session, run_id, round)
    download = service.archive_download(session, publisher_for(settings.redis_url), checkpoint)
    return _file_response(download, "application/x-tar")


@router.get(
    "/{round}/model.safetensors",
    response_class=FileResponse,
    responses=_download_responses("application/octet-stream", "The weights"),
)
def download_weights(
    run_id: IdPath,
    round: RoundPath,
    session: SessionDep,
    settings: SettingsDep,
    token: ReaderToken,
) -> FileResponse:
    """The checkpoint's model.safetensors alone; its sha256 is in the X-Checksum-SHA256 header."""
    runs.get_run(session, run_id, token)
    checkpoint = service.get_checkpoint(session, run_id, round)
    download = service.weights_download(session, publisher_for(settings.redis_url), checkpoint)
    return _file_response(download, "application/octet-stream")
