"""The API fixtures of tests/api (a client whose answers the OpenAPI document declares, actors)."""

from tests.api.conftest import client, openapi_document, world

__all__ = ["client", "openapi_document", "world"]
