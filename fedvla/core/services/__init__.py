"""The application's logic: REST routes, web pages and the worker all call these functions.

With fedvla.core, fedvla.core.models and fedvla.core.schemas they are the core
(tests/test_architecture.py): they import neither FastAPI nor Celery, and raise fedvla.core.errors'
domain errors, which fedvla.web.api.errors maps to HTTP. startup_kit and superlink_admin belong to
the sites, health to the web server.
"""
