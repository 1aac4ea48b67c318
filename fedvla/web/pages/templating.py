"""Jinja2 templates, their filters, and the one function that renders a page or its fragment.

A request from htmx (``HX-Request`` without ``HX-Boosted``) gets the page's fragment, a
``_name.html`` template that the full page includes; every other request gets the full page.
Pages send ``Vary: HX-Request`` and, where the REST API has the same data, ``Link: rel=alternate``.
"""

import dataclasses
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.templating import Jinja2Templates
from jinja2 import pass_context
from jinja2.runtime import Context
from starlette.responses import Response

from fedvla.core.models import ApiToken
from fedvla.core.services.redaction import for_reader
from fedvla.web.pages import session as web_session
from fedvla.web.pages.permissions import Permissions

NO_VALUE = "\u2013"  # an en dash: no value
WEB_PACKAGE = Path(__file__).resolve().parents[1]  # package data of fedvla.web
TEMPLATES_DIR = WEB_PACKAGE / "templates"
STATIC_DIR = WEB_PACKAGE / "static"


def human_bytes(value: float | None) -> str:
    if value is None:
        return NO_VALUE
    size = float(value)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(size) < 1000 or unit == "TB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    raise AssertionError("unreachable")


def human_seconds(value: float | None) -> str:
    if value is None:
        return NO_VALUE
    seconds = round(value)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours} h {minutes:02d} min"
    if minutes:
        return f"{minutes} min {secs:02d} s"
    return f"{value:.1f} s" if value < 10 else f"{secs} s"


def when(value: datetime | None) -> str:
    if value is None:
        return NO_VALUE
    if value.tzinfo is None:  # SQLite returns naive UTC
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def loss(value: float | None) -> str:
    return NO_VALUE if value is None else f"{value:.4f}"


@pass_context
def shown(context: Context, value: Any) -> Any:
    """``value`` as the signed-in token may see it: server paths hidden from non-admins."""
    return for_reader(context.get("principal"), value)


templates = Jinja2Templates(directory=TEMPLATES_DIR)
templates.env.filters.update(
    bytes=human_bytes, seconds=human_seconds, when=when, loss=loss, shown=shown
)
templates.env.filters["tojson_compact"] = lambda value: json.dumps(value, separators=(",", ":"))


def is_fragment_request(request: Request) -> bool:
    """htmx asking for a swap; not a boosted link, nor a history restore (the back button after
    a pushed URL fell out of htmx's cache), which both need the whole page."""
    headers = request.headers
    return (
        headers.get("HX-Request") == "true"
        and headers.get("HX-Boosted") != "true"
        and headers.get("HX-History-Restore-Request") != "true"
    )


def render(
    request: Request,
    template: str,
    page: Any,
    *,
    token: ApiToken | None,
    fragment: str | None = None,
    status_code: int = 200,
    alternate: str | None = None,
    nav: str = "",
    form_error: str | None = None,
) -> Response:
    """The page ``template``, or ``fragment`` alone for htmx; ``page`` is its context dataclass."""
    if dataclasses.is_dataclass(page) and not isinstance(page, type):
        context: dict[str, Any] = {f.name: getattr(page, f.name) for f in dataclasses.fields(page)}
    else:
        context = {}
    context.update(
        page=page,
        principal=token,
        can=Permissions(token),
        csrf_token=web_session.csrf_token(request),
        flashes=web_session.pop_flashes(request),
        alternate_json=alternate,
        nav=nav,
        form_error=form_error,
    )
    name = fragment if fragment and is_fragment_request(request) else template
    response = templates.TemplateResponse(request, name, context, status_code=status_code)
    response.headers["Vary"] = "HX-Request"
    if alternate:
        response.headers["Link"] = f'<{alternate}>; rel="alternate"; type="application/json"'
    return response
