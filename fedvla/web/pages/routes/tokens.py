"""The tokens page (admins): who has access, a new token for a person or a site's operator, revoke.

A new secret is shown once, in the answer to the form; it never goes into the session cookie.
"""

from fastapi import APIRouter, Request
from starlette.responses import RedirectResponse, Response

from fedvla.core.errors import FieldProblem
from fedvla.core.models import Role
from fedvla.core.schemas.sites import SitePublic
from fedvla.core.schemas.tokens import TokenCreate
from fedvla.core.services import sites as site_service
from fedvla.core.services import tokens as service
from fedvla.web.api.deps import SessionDep
from fedvla.web.pages import forms
from fedvla.web.pages import session as web_session
from fedvla.web.pages.contexts import FormState, TokensPage
from fedvla.web.pages.deps import WebAdmin
from fedvla.web.pages.errors import HtmlRoute
from fedvla.web.pages.templating import render

router = APIRouter(route_class=HtmlRoute, include_in_schema=False)

TOKEN_FIELDS = ("name", "role", "site_id")


def _page(
    request: Request,
    session: SessionDep,
    token: WebAdmin,
    form: FormState,
    created: tuple[str, str] | None = None,
    status_code: int = 200,
) -> Response:
    tokens, _ = service.list_tokens(session=session, limit=200)
    sites, _ = site_service.list_sites(session=session, token=token, limit=200)
    page = TokensPage(
        tokens=tokens,
        sites=[SitePublic.model_validate(site, from_attributes=True) for site in sites],
        roles=[role.value for role in Role],
        form=form,
        created=created,
    )
    wide = "; ".join(form.errors.get(forms.FORM_WIDE, [])) or None
    return render(
        request, "tokens.html", page, token=token, status_code=status_code, nav="tokens",
        alternate="/api/v1/tokens", form_error=wide,
    )  # fmt: skip


def _by_field(problems: list[FieldProblem]) -> list[FieldProblem]:
    """TokenCreate's role/site check names its field at the start of the reason ("site_id: ...")."""
    placed = []
    for problem in problems:
        field, _, reason = problem.reason.partition(": ")
        if problem.field not in TOKEN_FIELDS and field in TOKEN_FIELDS and reason:
            problem = FieldProblem(field=field, reason=reason)
        placed.append(problem)
    return placed


def _field(path: str) -> str:
    return path if path in TOKEN_FIELDS else forms.FORM_WIDE


@router.get("/tokens", name="web_tokens")
def list_tokens(request: Request, session: SessionDep, token: WebAdmin) -> Response:
    return _page(request, session, token, FormState(values={"role": "operator"}))


@router.post("/tokens", name="web_token_create")
async def create_token(request: Request, session: SessionDep, token: WebAdmin) -> Response:
    form = await request.form()
    values = {name: str(form.get(name, "")) for name in TOKEN_FIELDS}
    body = {**values, "site_id": values["site_id"] or None}
    outcome = forms.attempt(
        lambda: service.create_token(
            session=session, **TokenCreate.model_validate(body).model_dump()
        )
    )
    if outcome.saved is None:
        state = forms.form_state(values, _by_field(outcome.problems), _field)
        return _page(request, session, token, state, status_code=outcome.status_code)
    created, secret = outcome.saved
    return _page(
        request, session, token, FormState(values={"role": "operator"}), (created.name, secret)
    )


@router.post("/tokens/{token_id}/revoke", name="web_token_revoke")
def revoke_token(request: Request, token_id: int, session: SessionDep, token: WebAdmin) -> Response:
    target = service.get_token(session=session, token_id=token_id)
    service.revoke_token(session=session, token=target)
    web_session.flash(request, f"Token {target.name!r} revoked.")
    return RedirectResponse("/tokens", status_code=303)
