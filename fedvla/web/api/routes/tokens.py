"""/tokens: admins create, list and revoke API tokens."""

from typing import Annotated

from fastapi import APIRouter, Depends, status

from fedvla.core.schemas.tokens import TokenCreate, TokenCreated, TokenPublic, TokensPublic
from fedvla.core.services import tokens as service
from fedvla.web.api.deps import AdminToken, SessionDep
from fedvla.web.api.errors import error_responses
from fedvla.web.api.params import IdPath, Page, page_params

router = APIRouter(prefix="/tokens", tags=["tokens"], responses=error_responses(403))


@router.post("", response_model=TokenCreated, status_code=status.HTTP_201_CREATED)
def create_token(body: TokenCreate, session: SessionDep, _token: AdminToken) -> TokenCreated:
    """Create a token. The answer holds the secret; it is never shown again."""
    token, secret = service.create_token(
        session=session, name=body.name, role=body.role, site_id=body.site_id
    )
    return TokenCreated(**TokenPublic.model_validate(token).model_dump(), token=secret)


@router.get("", response_model=TokensPublic)
def list_tokens(
    session: SessionDep, _token: AdminToken, page: Annotated[Page, Depends(page_params)]
) -> TokensPublic:
    rows, count = service.list_tokens(session=session, offset=page.offset, limit=page.limit)
    return TokensPublic(data=[TokenPublic.model_validate(row) for row in rows], count=count)


@router.post("/{token_id}/revoke", response_model=TokenPublic)
def revoke_token(token_id: IdPath, session: SessionDep, _token: AdminToken) -> TokenPublic:
    """Revoke a token: it is refused (401) from now on."""
    token = service.get_token(session=session, token_id=token_id)
    return TokenPublic.model_validate(service.revoke_token(session=session, token=token))
