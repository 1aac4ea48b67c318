"""/experiments: admins define them; everyone reads them (operators: those their site is in)."""

from typing import Annotated

from fastapi import APIRouter, Depends, Response, status

from fedvla.core.schemas.experiments import (
    ExperimentCreate,
    ExperimentPublic,
    ExperimentsPublic,
    ExperimentUpdate,
)
from fedvla.core.services import experiments as service
from fedvla.core.services.redaction import model_for_reader
from fedvla.web.api.deps import AdminToken, ReaderToken, SessionDep, SettingsDep
from fedvla.web.api.errors import error_responses
from fedvla.web.api.params import IdPath, Page, page_params

router = APIRouter(prefix="/experiments", tags=["experiments"])

FORBIDDEN = error_responses(403)


@router.post(
    "", response_model=ExperimentPublic, status_code=status.HTTP_201_CREATED, responses=FORBIDDEN
)
def create_experiment(
    body: ExperimentCreate, session: SessionDep, _token: AdminToken
) -> ExperimentPublic:
    """Define an experiment (admins). It must be a federation that can run."""
    experiment = service.create_experiment(session=session, data=body)
    return service.to_public(session=session, experiment=experiment)


@router.get("", response_model=ExperimentsPublic)
def list_experiments(
    session: SessionDep, token: ReaderToken, page: Annotated[Page, Depends(page_params)]
) -> ExperimentsPublic:
    """Newest first. Operators see only the experiments their site takes part in."""
    rows, count = service.list_experiments(
        session=session, token=token, offset=page.offset, limit=page.limit
    )
    data = [
        model_for_reader(token, service.to_public(session=session, experiment=row)) for row in rows
    ]
    return ExperimentsPublic(data=data, count=count)


@router.get("/{experiment_id}", response_model=ExperimentPublic, responses=FORBIDDEN)
def get_experiment(
    experiment_id: IdPath, session: SessionDep, token: ReaderToken
) -> ExperimentPublic:
    experiment = service.get_readable_experiment(
        session=session, token=token, experiment_id=experiment_id
    )
    return model_for_reader(token, service.to_public(session=session, experiment=experiment))


@router.patch("/{experiment_id}", response_model=ExperimentPublic, responses=FORBIDDEN)
def update_experiment(
    experiment_id: IdPath, body: ExperimentUpdate, session: SessionDep, _token: AdminToken
) -> ExperimentPublic:
    """Change fields (admins). Runs already launched keep the config they were frozen with."""
    experiment = service.get_experiment(session=session, experiment_id=experiment_id)
    experiment = service.update_experiment(session=session, experiment=experiment, data=body)
    return service.to_public(session=session, experiment=experiment)


@router.delete("/{experiment_id}", status_code=status.HTTP_204_NO_CONTENT, responses=FORBIDDEN)
def delete_experiment(
    experiment_id: IdPath, session: SessionDep, settings: SettingsDep, _token: AdminToken
) -> Response:
    """Delete the experiment and its runs with their checkpoints and logs on disk (admins);
    refused (409) while a run is queued or running."""
    experiment = service.get_experiment(session=session, experiment_id=experiment_id)
    service.delete_experiment(session=session, settings=settings, experiment=experiment)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
