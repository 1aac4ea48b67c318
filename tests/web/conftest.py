"""The dashboard through TestClient on a real migrated database: a browser's view without JS."""

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
from bs4 import BeautifulSoup
from fastapi import FastAPI
from fastapi.testclient import TestClient
from httpx import Response
from sqlmodel import Session

from fedvla.core.models import Role
from tests.factories import make_site, make_token


def html(response: Response) -> BeautifulSoup:
    return BeautifulSoup(response.text, "html.parser")


def csrf_of(response: Response) -> str:
    field = html(response).find("input", attrs={"name": "csrf_token"})
    assert field is not None, "page has no CSRF field"
    value = field["value"]
    assert isinstance(value, str) and value
    return value


@dataclass
class Browser:
    """A TestClient with a cookie jar, as one browser: signs in, posts forms with CSRF tokens."""

    client: TestClient

    def get(self, url: str, **kwargs: object) -> Response:
        return self.client.get(url, **kwargs)  # type: ignore[arg-type]

    def sign_in(self, secret: str) -> Response:
        form = self.client.get("/signin")
        return self.client.post(
            "/signin", data={"token": secret, "csrf_token": csrf_of(form), "next": "/experiments"}
        )

    def csrf(self) -> str:
        return csrf_of(self.client.get("/experiments"))

    def post(self, url: str, data: dict[str, object] | None = None, csrf: bool = True) -> Response:
        fields = dict(data or {})
        if csrf:
            fields["csrf_token"] = self.csrf()
        return self.client.post(url, data=fields, follow_redirects=False)  # type: ignore[arg-type]


@pytest.fixture
def browser(app: FastAPI) -> Iterator[Callable[[str | None], Browser]]:
    """browser(secret) -> a fresh client, signed in with that token (None: signed out)."""
    clients: list[TestClient] = []

    def make(secret: str | None) -> Browser:
        client = TestClient(app)
        client.__enter__()
        clients.append(client)
        b = Browser(client)
        if secret is not None:
            response = b.sign_in(secret)
            assert response.status_code == 200, response.text
        return b

    yield make
    for client in clients:
        client.__exit__(None, None, None)


@dataclass
class Secrets:
    admin: str
    viewer: str
    operator: str
    operator_site_id: int


@pytest.fixture
def secrets(session: Session) -> Secrets:
    site = make_site(session)
    assert site.id is not None
    return Secrets(
        admin=make_token(session, Role.admin),
        viewer=make_token(session, Role.viewer),
        operator=make_token(session, Role.operator, site_id=site.id),
        operator_site_id=site.id,
    )
