"""Each page's context dataclass documents its fields, and templates use only what is declared."""

import dataclasses
import typing
from pathlib import Path

import pytest
from jinja2 import meta

from fedvla.web.pages import contexts
from fedvla.web.pages.templating import TEMPLATES_DIR, templates

COMMON = {
    "request", "page", "principal", "can", "csrf_token", "flashes", "alternate_json", "nav",
    "form_error", "url_for",
}  # fmt: skip
"""What render() passes to every template besides the page's fields."""

PAGES: dict[str, tuple[type, set[str]]] = {
    "signin.html": (contexts.SignInPage, set()),
    "error.html": (contexts.ErrorPage, set()),
    "_error.html": (contexts.ErrorPage, set()),
    "experiments.html": (contexts.ExperimentsPage, set()),
    "_experiments_table.html": (contexts.ExperimentsPage, set()),
    "experiment_form.html": (contexts.ExperimentFormPage, set()),
    "experiment.html": (contexts.ExperimentPage, set()),
    "_experiment_runs.html": (contexts.ExperimentPage, set()),
    "runs.html": (contexts.RunsPage, set()),
    "_runs_table.html": (contexts.RunsPage, set()),
    "run.html": (contexts.RunPage, set()),
    "_run_live.html": (contexts.RunPage, set()),
    "_run_status.html": (contexts.RunPage, set()),
    "_run_tables.html": (contexts.RunPage, set()),
    "_run_notes.html": (contexts.NotesSection, set()),
    "_run_downloads.html": (contexts.RunPage, set()),
    "compare.html": (contexts.ComparePage, set()),
    "sites.html": (contexts.SitesPage, set()),
    "_sites_table.html": (contexts.SitesPage, set()),
    "_site_decision.html": (contexts.SitesPage, {"site", "next"}),
    "site.html": (contexts.SitePage, {"next"}),
    "site_form.html": (contexts.SiteFormPage, set()),
    "_site_node.html": (contexts.SiteNodePage, set()),
    "workers.html": (contexts.WorkersPage, set()),
    "tokens.html": (contexts.TokensPage, set()),
    "_workers.html": (contexts.WorkersPage, set()),
}
LAYOUT = {"base.html", "_macros.html"}
MACROS = {"input", "select", "textarea", "csrf", "status", "badge"}
"""Imported from _macros.html (jinja2.meta reports imported names as undeclared)."""


def page_classes() -> list[type]:
    return [
        value
        for value in vars(contexts).values()
        if dataclasses.is_dataclass(value) and value.__module__ == contexts.__name__
    ]


@pytest.mark.parametrize("page", page_classes(), ids=lambda cls: cls.__name__)
def test_every_field_says_what_it_holds(page: type) -> None:
    hints = typing.get_type_hints(page, include_extras=True)
    for field in dataclasses.fields(page):
        metadata = getattr(hints[field.name], "__metadata__", ())
        assert metadata and isinstance(metadata[0], str) and metadata[0], field.name


def test_every_template_has_a_page() -> None:
    names = {path.name for path in Path(TEMPLATES_DIR).glob("*.html")}
    assert names - LAYOUT == set(PAGES)


@pytest.mark.parametrize("name", sorted(PAGES))
def test_template_uses_only_declared_names(name: str) -> None:
    page, extra = PAGES[name]
    source = (Path(TEMPLATES_DIR) / name).read_text()
    used = meta.find_undeclared_variables(templates.env.parse(source))
    declared = {f.name for f in dataclasses.fields(page)} | COMMON | MACROS | extra
    assert used <= declared, f"{name} uses undeclared {sorted(used - declared)}"
