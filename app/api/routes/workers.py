"""/workers: the GPU workers that registered, whether they are online, and what they run."""

from fastapi import APIRouter

from app.api.deps import ReaderToken, SessionDep, SettingsDep
from app.schemas.runs import WorkerPublic, WorkersPublic
from app.services import workers as service

router = APIRouter(prefix="/workers", tags=["workers"])


@router.get("", response_model=WorkersPublic)
def list_workers(session: SessionDep, settings: SettingsDep, _token: ReaderToken) -> WorkersPublic:
    """Newest heartbeat first; a worker silent for FEDVLA_LOST_AFTER_S is shown offline."""
    states = service.list_workers(session, offline_after_s=settings.lost_after_s)
    data = [
        WorkerPublic.model_validate({**state.worker.model_dump(), "online": state.online})
        for state in states
    ]
    return WorkersPublic(data=data, count=len(data))
