"""Adds the dashboard to an app: session cookie, security headers, static files, page routes."""

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from app.core.config import Settings
from app.core.security import session_secret_key
from app.web.errors import install_page_errors
from app.web.headers import SecurityHeaders
from app.web.routes import auth, experiments, runs, sites, tokens, workers
from app.web.session import SessionCookieMiddleware
from app.web.templating import STATIC_DIR


def install_web(app: FastAPI, settings: Settings) -> None:
    app.add_middleware(SessionCookieMiddleware, secret_key=session_secret_key(settings))
    app.add_middleware(SecurityHeaders)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    for module in (auth, experiments, runs, sites, tokens, workers):
        app.include_router(module.router)
    install_page_errors(app)
