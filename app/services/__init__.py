"""The application's logic: REST routes, web pages and the worker all call these functions.

With app.core, app.models and app.schemas they are the core (tests/test_architecture.py): they
import neither FastAPI nor Celery, and raise app.core.errors' domain errors, which app.api.errors
maps to HTTP. startup_kit and superlink_admin belong to the sites, health to the web server.
"""
