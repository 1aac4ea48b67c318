"""/runs/{id}/checkpoints: list, and download as one archive or the weights file alone."""

from fastapi import APIRouter
from fastapi.responses import FileResponse

from app.api.deps import ReaderToken, SessionDep, SettingsDep, in_threadpool
from app.core.errors import ERROR_RESPONSES, ErrorBody
from app.schemas.runs import CheckpointPublic, CheckpointsPublic
from app.services import checkpoints as service
from app.services import runs
from app.services.checkpoints import Download
from app.services.events import publisher_for

router = APIRouter(
    prefix="/runs/{run_id}/checkpoints", tags=["checkpoints"], responses=ERROR_RESPONSES
)

SHA256_HEADER = "X-Checksum-SHA256"

DOWNLOAD_RESPONSES: dict[int | str, dict[str, object]] = {
    206: {"description": "The requested byte range (resume a broken download with Range)"},
    410: {
        "model": ErrorBody,
        "description": "The checkpoint's weights were removed from disk or no longer match "
        "their recorded sha256 (an event on the run says which)",
    },
    416: {"description": "The range is outside the file"},
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
def list_checkpoints(run_id: int, session: SessionDep, token: ReaderToken) -> CheckpointsPublic:
    """The checkpoints the run kept (retention removes older ones), by round."""
    runs.get_run(session, run_id, token)
    rows = service.list_checkpoints(session, run_id)
    return CheckpointsPublic(
        data=[CheckpointPublic.model_validate(row) for row in rows], count=len(rows)
    )


@router.get(
    "/{round}/archive",
    response_class=FileResponse,
    responses={
        200: {"content": {"application/x-tar": {}}, "description": "The pretrained_model folder"},
        **DOWNLOAD_RESPONSES,
    },
)
def download_archive(
    run_id: int, round: int, session: SessionDep, settings: SettingsDep, token: ReaderToken
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
    responses={
        200: {"content": {"application/octet-stream": {}}, "description": "The weights"},
        **DOWNLOAD_RESPONSES,
    },
)
def download_weights(
    run_id: int, round: int, session: SessionDep, settings: SettingsDep, token: ReaderToken
) -> FileResponse:
    """The checkpoint's model.safetensors alone; its sha256 is in the X-Checksum-SHA256 header."""
    runs.get_run(session, run_id, token)
    checkpoint = service.get_checkpoint(session, run_id, round)
    download = service.weights_download(session, publisher_for(settings.redis_url), checkpoint)
    return _file_response(download, "application/octet-stream")
