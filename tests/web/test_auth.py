"""Sign-in with an API token, the session cookie's flags, sign-out, CSRF."""

from collections.abc import Callable

from fastapi.testclient import TestClient

from tests.web.conftest import Browser, Secrets, csrf_of, html


def test_pages_redirect_to_sign_in_when_signed_out(browser: Callable[..., Browser]) -> None:
    b = browser(None)
    response = b.client.get("/experiments?x=1", follow_redirects=False)
    assert response.status_code == 303
    assert response.headers["location"].endswith("/signin?next=%2Fexperiments%3Fx%3D1")


def test_sign_in_form_is_labelled_and_carries_csrf(browser: Callable[..., Browser]) -> None:
    page = browser(None).get("/signin")
    soup = html(page)
    field = soup.find("input", attrs={"name": "token"})
    assert field is not None and field["type"] == "password"
    label = soup.find("label", attrs={"for": field["id"]})
    assert label is not None and "API token" in label.text
    assert csrf_of(page)


def test_sign_in_sets_a_signed_httponly_lax_cookie(
    browser: Callable[..., Browser], secrets: Secrets
) -> None:
    b = browser(None)
    form = b.get("/signin")
    response = b.client.post(
        "/signin",
        data={"token": secrets.admin, "csrf_token": csrf_of(form), "next": "/sites"},
        follow_redirects=False,
    )
    assert response.status_code == 303
    assert response.headers["location"] == "/sites"
    cookie = response.headers["set-cookie"]
    assert cookie.startswith("fedvla_session=")
    assert "httponly" in cookie.lower() and "samesite=lax" in cookie.lower()
    assert "secure" not in cookie.lower()  # plain http here; see the https test
    assert secrets.admin not in cookie
    page = b.get("/experiments")
    assert page.status_code == 200
    assert "Signed in as" in page.text


def test_cookie_is_secure_over_https(app: object, secrets: Secrets) -> None:
    with TestClient(app, base_url="https://testserver") as client:  # type: ignore[arg-type]
        form = client.get("/signin")
        response = client.post(
            "/signin",
            data={"token": secrets.viewer, "csrf_token": csrf_of(form)},
            follow_redirects=False,
        )
    assert response.status_code == 303
    assert "; secure" in response.headers["set-cookie"].lower()


def test_wrong_token_is_refused_on_the_form(browser: Callable[..., Browser]) -> None:
    b = browser(None)
    form = b.get("/signin")
    response = b.client.post("/signin", data={"token": "fvla_nope", "csrf_token": csrf_of(form)})
    assert response.status_code == 401
    error = html(response).find(id="token-error")
    assert error is not None and "unknown or revoked" in error.text


def test_sign_in_without_csrf_is_refused(browser: Callable[..., Browser], secrets: Secrets) -> None:
    b = browser(None)
    b.get("/signin")
    response = b.client.post("/signin", data={"token": secrets.admin}, follow_redirects=False)
    assert response.status_code == 403
    assert "CSRF" in response.text


def test_forged_cookie_is_ignored(app: object, secrets: Secrets) -> None:
    with TestClient(app) as client:  # type: ignore[arg-type]
        client.cookies.set("fedvla_session", "eyJ0b2tlbl9pZCI6IDF9.forged.sig")
        response = client.get("/experiments", follow_redirects=False)
    assert response.status_code == 303


def test_open_redirect_is_not_followed(browser: Callable[..., Browser], secrets: Secrets) -> None:
    b = browser(None)
    form = b.get("/signin")
    response = b.client.post(
        "/signin",
        data={"token": secrets.admin, "csrf_token": csrf_of(form), "next": "//evil.example/"},
        follow_redirects=False,
    )
    assert response.headers["location"] == "/experiments"


def test_sign_out_ends_the_session(browser: Callable[..., Browser], secrets: Secrets) -> None:
    b = browser(secrets.viewer)
    response = b.post("/signout")
    assert response.status_code == 303
    assert b.client.get("/experiments", follow_redirects=False).status_code == 303


def test_revoked_token_ends_the_session(
    browser: Callable[..., Browser], secrets: Secrets, session: object
) -> None:
    from app.services import tokens as token_service

    b = browser(secrets.viewer)
    assert b.get("/experiments").status_code == 200
    from sqlmodel import select

    from app.core.security import hash_token
    from app.models import ApiToken

    token = session.exec(
        select(ApiToken).where(ApiToken.token_hash == hash_token(secrets.viewer))
    ).one()  # type: ignore[attr-defined]
    token_service.revoke_token(session=session, token=token)  # type: ignore[arg-type]
    assert b.client.get("/experiments", follow_redirects=False).status_code == 303


def test_session_cookie_reads_the_api_but_never_writes(
    browser: Callable[..., Browser], secrets: Secrets
) -> None:
    b = browser(secrets.admin)
    assert b.get("/api/v1/experiments").status_code == 200
    response = b.client.post("/api/v1/experiments", json={"name": "x", "policy": "tiny"})
    assert response.status_code == 401
