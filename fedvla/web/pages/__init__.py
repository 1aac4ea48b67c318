"""The HTMX dashboard: pages that call the same services as the REST API (see
fedvla.web.pages.mount)."""
