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
    from fedvla.core.services import tokens as token_service

    b = browser(secrets.viewer)
    assert b.get("/experiments").status_code == 200
    from sqlmodel import select

    from fedvla.core.models import ApiToken
    from fedvla.core.security import hash_token

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


PUBLIC_KEY_OF_OLD_RELEASES = "fedvla-development-secret-change-me"


def _cookie(secret_key: str, payload: dict[str, object]) -> str:
    """A session cookie as Starlette's SessionMiddleware signs one."""
    import base64
    import json

    from itsdangerous import TimestampSigner

    data = base64.b64encode(json.dumps(payload).encode())
    return TimestampSigner(secret_key).sign(data).decode()


def test_a_cookie_forged_with_the_old_public_key_is_refused(
    app: object, secrets: Secrets, session: object
) -> None:
    from sqlmodel import select

    from fedvla.core.models import ApiToken, Role

    admin = session.exec(select(ApiToken).where(ApiToken.role == Role.admin)).first()  # type: ignore[attr-defined]
    assert admin is not None
    payloads: list[dict[str, object]] = [{"token_id": admin.id}, {"session_key": "guessed"}]
    for payload in payloads:
        with TestClient(app) as client:  # type: ignore[arg-type]
            client.cookies.set("fedvla_session", _cookie(PUBLIC_KEY_OF_OLD_RELEASES, payload))
            page = client.get("/tokens", follow_redirects=False)
            api = client.get("/api/v1/tokens")
        assert page.status_code == 303, payload
        assert api.status_code == 401, payload


def test_a_cookie_signed_with_the_real_key_still_needs_a_live_server_session(
    app: object, secrets: Secrets, session: object
) -> None:
    """Even whoever learns the signing key cannot make a session: the key names a row."""
    from sqlmodel import select

    from fedvla.core.models import ApiToken, Role
    from fedvla.core.security import session_secret_key

    key = session_secret_key(app.state.settings)  # type: ignore[attr-defined]
    admin = session.exec(select(ApiToken).where(ApiToken.role == Role.admin)).first()  # type: ignore[attr-defined]
    assert admin is not None
    for payload in ({"token_id": admin.id}, {"session_key": "made-up"}):
        with TestClient(app) as client:  # type: ignore[arg-type]
            client.cookies.set("fedvla_session", _cookie(key, payload))
            assert client.get("/tokens", follow_redirects=False).status_code == 303
            assert client.get("/api/v1/tokens").status_code == 401


def test_a_cookie_copied_before_sign_out_no_longer_works(
    browser: Callable[..., Browser], secrets: Secrets, app: object
) -> None:
    b = browser(secrets.admin)
    copied = dict(b.client.cookies)
    assert b.post("/signout").status_code == 303

    with TestClient(app, cookies=copied) as thief:  # type: ignore[arg-type]
        assert thief.get("/tokens", follow_redirects=False).status_code == 303
        assert thief.get("/api/v1/tokens").status_code == 401


def test_revoking_a_token_ends_every_session_signed_in_with_it(
    browser: Callable[..., Browser], secrets: Secrets, session: object, app: object
) -> None:
    from sqlmodel import select

    from fedvla.core.models import ApiToken, WebSession
    from fedvla.core.security import hash_token
    from fedvla.core.services import tokens as token_service

    first, second = browser(secrets.viewer), browser(secrets.viewer)
    token = session.exec(
        select(ApiToken).where(ApiToken.token_hash == hash_token(secrets.viewer))
    ).one()  # type: ignore[attr-defined]
    assert len(session.exec(select(WebSession).where(WebSession.token_id == token.id)).all()) == 2  # type: ignore[attr-defined]

    token_service.revoke_token(session=session, token=token)  # type: ignore[arg-type]

    assert session.exec(select(WebSession).where(WebSession.token_id == token.id)).all() == []  # type: ignore[attr-defined]
    for b in (first, second):
        assert b.client.get("/experiments", follow_redirects=False).status_code == 303
        assert b.client.get("/api/v1/experiments").status_code == 401


def test_without_a_configured_key_one_is_generated_once_into_the_data_dir(
    settings: object, tmp_path: object
) -> None:
    import stat

    from fedvla.core.config import Settings
    from fedvla.core.security import session_secret_key

    assert isinstance(settings, Settings) and not settings.secret_key
    first = session_secret_key(settings)
    again = session_secret_key(settings)
    mode = stat.S_IMODE(settings.secret_key_file.stat().st_mode)

    assert first == again and len(first) >= 48
    assert first != PUBLIC_KEY_OF_OLD_RELEASES
    assert mode == 0o600
    other = settings.model_copy(update={"data_dir": settings.data_dir / "elsewhere"})
    assert session_secret_key(other) != first  # random, not a constant
    configured = settings.model_copy(update={"secret_key": "k" * 40})
    assert session_secret_key(configured) == "k" * 40


def test_production_refuses_to_start_without_an_explicit_key(tmp_path: object) -> None:
    import pytest
    from pydantic import ValidationError

    from fedvla.core.config import Settings

    with pytest.raises(ValidationError, match="FEDVLA_SECRET_KEY must be set"):
        Settings(environment="production", data_dir=tmp_path, secret_key="")  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="FEDVLA_SECRET_KEY must be set"):
        Settings(environment="production", data_dir=tmp_path, secret_key="short")  # type: ignore[arg-type]
    assert Settings(environment="production", data_dir=tmp_path, secret_key="s" * 32)  # type: ignore[arg-type]


def test_pages_forbid_framing_and_sniffing(
    browser: Callable[..., Browser], secrets: Secrets
) -> None:
    b = browser(secrets.admin)
    for url in ("/signin", "/experiments", "/static/css/app.css", "/api/v1/experiments"):
        response = b.get(url)
        assert response.headers["X-Frame-Options"] == "DENY", url
        assert response.headers["X-Content-Type-Options"] == "nosniff", url
        assert response.headers["Referrer-Policy"] == "same-origin", url
        policy = response.headers["Content-Security-Policy"]
        assert "frame-ancestors 'none'" in policy and "script-src 'self'" in policy, url
    assert "Content-Security-Policy" not in b.get("/docs").headers  # Swagger UI's CDN script


def test_unknown_dashboard_paths_answer_the_error_page_and_the_api_json(
    browser: Callable[..., Browser], secrets: Secrets
) -> None:
    b = browser(secrets.viewer)
    page_accept = {"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"}

    page = b.get("/no-such-page", headers=page_accept)
    api = b.get("/api/v1/no-such-route", headers=page_accept)
    scripted = b.get("/no-such-page", headers={"Accept": "application/json"})

    assert page.status_code == 404
    assert page.headers["content-type"].startswith("text/html")
    assert "Not Found" in html(page).find("h1").text
    assert html(page).select_one("nav") is not None  # the dashboard's own page, signed in
    assert (api.status_code, api.json()) == (404, {"detail": "Not Found", "errors": []})
    assert (scripted.status_code, scripted.json()["detail"]) == (404, "Not Found")
