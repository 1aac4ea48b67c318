"""/workers: the GPU workers that registered, whether they are online, and what they run."""

from fastapi import APIRouter

from fedvla.core.schemas.runs import WorkerPublic, WorkersPublic
from fedvla.core.services import workers as service
from fedvla.web.api.deps import ReaderToken, SessionDep, SettingsDep

router = APIRouter(prefix="/workers", tags=["workers"])


@router.get("", response_model=WorkersPublic)
def list_workers(session: SessionDep, settings: SettingsDep, token: ReaderToken) -> WorkersPublic:
    """Newest heartbeat first; a worker silent for FEDVLA_LOST_AFTER_S is shown offline.
    ``current_run_id`` is null for a run the caller may not read."""
    states = service.list_workers(session, token=token, offline_after_s=settings.lost_after_s)
    data = [
        WorkerPublic.model_validate(
            {
                **state.worker.model_dump(),
                "online": state.online,
                "current_run_id": state.current_run_id,
            }
        )
        for state in states
    ]
    return WorkersPublic(data=data, count=len(data))
