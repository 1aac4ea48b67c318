"""Adds the dashboard to an app: session cookie, security headers, static files, page routes."""

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from fedvla.core.config import Settings
from fedvla.core.security import session_secret_key
from fedvla.web.pages.errors import install_page_errors
from fedvla.web.pages.headers import SecurityHeaders
from fedvla.web.pages.routes import auth, experiments, runs, sites, tokens, workers
from fedvla.web.pages.session import SessionCookieMiddleware
from fedvla.web.pages.templating import STATIC_DIR


def install_web(app: FastAPI, settings: Settings) -> None:
    app.add_middleware(SessionCookieMiddleware, secret_key=session_secret_key(settings))
    app.add_middleware(SecurityHeaders)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    for module in (auth, experiments, runs, sites, tokens, workers):
        app.include_router(module.router)
    install_page_errors(app)
