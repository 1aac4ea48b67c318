"""Experiment pages: list, create with inline errors, edit, clone, launch, roles."""

from collections.abc import Callable
from typing import Any

from sqlmodel import Session, select

from fedvla.core.experiment_config import DatasetRef, Partition
from fedvla.core.models import Experiment, Run, RunStatus
from fedvla.core.schemas.experiments import ExperimentCreate
from tests.datasets import root_of
from tests.factories import make_experiment, simulation_body
from tests.web.conftest import Browser, Secrets, html

DATASET_ROOT = root_of("test/so100_pick")
VALID_FORM = {
    "name": "pick-fedavg",
    "description": "two labs",
    "policy": "tiny",
    "strategy": "fedavg",
    "proximal_mu": "0",
    "server_learning_rate": "0.01",
    "server_momentum": "0.9",
    "server_step": "1",
    "num_rounds": "2",
    "fraction_train": "1",
    "min_clients": "2",
    "local_steps": "2",
    "batch_size": "2",
    "learning_rate": "0.0001",
    "lr_schedule": "cosine",
    "warmup_steps": "1000",
    "decay_steps": "30000",
    "decay_learning_rate": "0.0000025",
    "optimizer_state": "fresh",
    "seed": "0",
    "eval_every": "1",
    "eval_batches": "1",
    "client_holdout_fraction": "0.1",
    "checkpoint_every": "1",
    "keep_checkpoints": "3",
    "mode": "simulation",
    "normalization": "local",
    "transport_dtype": "float32",
    "client_num_cpus": "1",
    "client_num_gpus": "0",
    "device": "cpu",
    "client_datasets": "",
    "partition_repo_id": "local/so100",
    "partition_root": str(DATASET_ROOT),
    "partition_num_clients": "2",
    "partition_scheme": "iid",
    "partition_holdout_episodes": "1",
    "eval_datasets": "",
}


def field_error(response: object, name: str) -> str | None:
    error = html(response).find(id=f"f-{name}-error")  # type: ignore[arg-type]
    return None if error is None else error.text.strip()


def input_value(response: object, name: str) -> str | None:
    soup = html(response)  # type: ignore[arg-type]
    tag = soup.find(attrs={"name": name, "id": f"f-{name}"})
    if tag is None:
        return None
    if tag.name == "textarea":
        return tag.text
    if tag.name == "select":
        chosen = tag.find("option", selected=True)
        return None if chosen is None else str(chosen["value"])
    return str(tag.get("value"))


def test_every_input_has_a_label(browser: Callable[..., Browser], secrets: Secrets) -> None:
    soup = html(browser(secrets.admin).get("/experiments/new"))
    inputs = soup.select(
        "form.stacked input:not([type=hidden]):not([type=checkbox]), select, textarea"
    )
    assert len(inputs) > 20
    for tag in inputs:
        assert soup.find("label", attrs={"for": tag["id"]}) is not None, tag


def test_create_shows_each_error_by_its_field_and_keeps_values(
    browser: Callable[..., Browser], secrets: Secrets, session: Session
) -> None:
    b = browser(secrets.admin)
    form = {**VALID_FORM, "num_rounds": "0", "learning_rate": "fast", "partition_num_clients": "1"}
    response = b.post("/experiments", form)
    assert response.status_code == 422
    assert "greater than or equal to 1" in (field_error(response, "num_rounds") or "")
    assert "valid number" in (field_error(response, "learning_rate") or "")
    assert field_error(response, "policy") is None
    assert input_value(response, "learning_rate") == "fast"
    assert input_value(response, "description") == "two labs"
    assert input_value(response, "partition_root") == str(DATASET_ROOT)
    assert html(response).find(id="form-error") is not None
    assert session.exec(select(Experiment)).first() is None


def test_federation_rule_errors_land_on_their_field(
    browser: Callable[..., Browser], secrets: Secrets
) -> None:
    b = browser(secrets.admin)
    response = b.post("/experiments", {**VALID_FORM, "min_clients": "3"})
    assert response.status_code == 422
    assert "min_clients (3) exceeds the 2 clients" in (field_error(response, "min_clients") or "")
    response = b.post("/experiments", {**VALID_FORM, "partition_repo_id": ""})
    assert response.status_code == 422
    assert html(response).find(id="form-error") is not None


def test_create_then_fix_then_detail(
    browser: Callable[..., Browser], secrets: Secrets, session: Session
) -> None:
    b = browser(secrets.admin)
    assert b.post("/experiments", {**VALID_FORM, "num_rounds": "-1"}).status_code == 422
    response = b.post("/experiments", VALID_FORM)
    assert response.status_code == 303
    experiment = session.exec(select(Experiment)).one()
    assert response.headers["location"] == f"/experiments/{experiment.id}"
    assert experiment.config.partition.model_dump() == {
        "dataset": {"repo_id": "local/so100", "root": str(DATASET_ROOT), "episodes": None},
        "num_clients": 2,
        "scheme": "iid",
        "holdout_episodes": 1,
    }
    page = b.get(f"/experiments/{experiment.id}")
    assert "created" in page.text and "pick-fedavg" in page.text
    assert page.headers["link"] == (
        f'</api/v1/experiments/{experiment.id}>; rel="alternate"; type="application/json"'
    )


def test_duplicate_name_is_shown_on_the_name_field(
    browser: Callable[..., Browser], secrets: Secrets, session: Session
) -> None:
    existing = make_experiment(session, simulation_body())
    response = browser(secrets.admin).post("/experiments", {**VALID_FORM, "name": existing.name})
    assert response.status_code == 409
    assert "already in use" in (field_error(response, "name") or "")


def test_edit_keeps_fields_and_saves(
    browser: Callable[..., Browser], secrets: Secrets, session: Session
) -> None:
    experiment = make_experiment(session, simulation_body(num_rounds=2))
    b = browser(secrets.admin)
    form = b.get(f"/experiments/{experiment.id}/edit")
    assert input_value(form, "name") == experiment.name
    assert input_value(form, "partition_repo_id") == "test/so100_pick"
    values = {
        tag["name"]: input_value(form, tag["name"]) or ""
        for tag in html(form).select("[id^=f-]")
        if tag.get("name")
    }
    response = b.post(f"/experiments/{experiment.id}/edit", {**values, "num_rounds": "7"})
    assert response.status_code == 303
    session.refresh(experiment)
    assert experiment.config.num_rounds == 7
    bad = b.post(f"/experiments/{experiment.id}/edit", {**values, "batch_size": "0"})
    assert bad.status_code == 422 and field_error(bad, "batch_size")
    session.refresh(experiment)
    assert experiment.config.batch_size == 8


def test_clone_prefills_the_create_form(
    browser: Callable[..., Browser], secrets: Secrets, session: Session
) -> None:
    experiment = make_experiment(session, simulation_body(seed=42))
    form = browser(secrets.admin).get(f"/experiments/{experiment.id}/clone")
    assert input_value(form, "name") == f"{experiment.name}-copy"
    assert input_value(form, "seed") == "42"
    assert html(form).find("form", attrs={"action": "/experiments"}) is not None


def test_launch_queues_a_run_and_shows_it(
    browser: Callable[..., Browser], secrets: Secrets, session: Session
) -> None:
    experiment = make_experiment(session, simulation_body())
    b = browser(secrets.admin)
    response = b.post(f"/experiments/{experiment.id}/launch")
    assert response.status_code == 303
    run = session.exec(select(Run)).one()
    assert run.status == RunStatus.queued
    assert response.headers["location"] == f"/runs/{run.id}"
    listing = b.get("/experiments")
    row = html(listing).find("a", string=experiment.name).find_parent("tr")
    assert f"run {run.id}" in row.text and "queued" in row.text


def test_viewer_sees_no_buttons_and_is_refused(
    browser: Callable[..., Browser], secrets: Secrets, session: Session
) -> None:
    experiment = make_experiment(session, simulation_body())
    b = browser(secrets.viewer)
    listing = html(b.get("/experiments"))
    assert listing.find("a", string="New experiment") is None
    detail = html(b.get(f"/experiments/{experiment.id}"))
    assert detail.find("button", string="Launch run") is None
    assert detail.find("a", string="Edit") is None and detail.find("a", string="Clone") is None
    assert b.get("/experiments/new").status_code == 403
    assert b.post("/experiments", VALID_FORM).status_code == 403
    assert b.post(f"/experiments/{experiment.id}/launch").status_code == 403
    assert b.post(f"/experiments/{experiment.id}/edit", VALID_FORM).status_code == 403
    assert session.exec(select(Run)).first() is None


def test_admin_sees_the_buttons(
    browser: Callable[..., Browser], secrets: Secrets, session: Session
) -> None:
    experiment = make_experiment(session, simulation_body())
    detail = html(browser(secrets.admin).get(f"/experiments/{experiment.id}"))
    assert detail.find("button", string="Launch run") is not None
    assert detail.find("a", string="Edit") is not None


def test_post_without_csrf_is_refused(
    browser: Callable[..., Browser], secrets: Secrets, session: Session
) -> None:
    experiment = make_experiment(session, simulation_body())
    b = browser(secrets.admin)
    response = b.post(f"/experiments/{experiment.id}/launch", csrf=False)
    assert response.status_code == 403
    assert "CSRF" in html(response).find("h1").text
    wrong = b.post(f"/experiments/{experiment.id}/launch", {"csrf_token": "x"}, csrf=False)
    assert wrong.status_code == 403
    assert session.exec(select(Run)).first() is None


def test_operator_sees_only_its_sites_experiments(
    browser: Callable[..., Browser], secrets: Secrets, session: Session
) -> None:
    hidden = make_experiment(session, simulation_body())
    b = browser(secrets.operator)
    assert hidden.name not in b.get("/experiments").text
    assert b.get(f"/experiments/{hidden.id}").status_code == 403


def test_htmx_request_gets_the_fragment(
    browser: Callable[..., Browser], secrets: Secrets, session: Session
) -> None:
    make_experiment(session, simulation_body())
    b = browser(secrets.viewer)
    fragment = b.get("/experiments", headers={"HX-Request": "true"})
    assert fragment.text.lstrip().startswith('<div class="table-wrap" id="experiments-table">')
    assert "<html" not in fragment.text
    assert "HX-Request" in fragment.headers["vary"]
    boosted = b.get("/experiments", headers={"HX-Request": "true", "HX-Boosted": "true"})
    assert "<html" in boosted.text
    full = b.get("/experiments")
    assert "<html" in full.text and "HX-Request" in full.headers["vary"]
    assert full.headers["link"] == '</api/v1/experiments>; rel="alternate"; type="application/json"'


def test_page_shows_what_the_api_returns(
    browser: Callable[..., Browser], secrets: Secrets, session: Session
) -> None:
    for _ in range(3):
        make_experiment(session, simulation_body())
    b = browser(secrets.viewer)
    api = b.get("/api/v1/experiments").json()
    page = html(b.get("/experiments"))
    names = [a.text for a in page.select("#experiments-table tbody td:first-child a")]
    assert names == [e["name"] for e in api["data"]]
    assert f"{api['count']} experiments" in page.text


def test_deployment_experiment_names_its_sites(
    browser: Callable[..., Browser], secrets: Secrets, session: Session
) -> None:
    b = browser(secrets.admin)
    form = {**VALID_FORM, "mode": "deployment", "partition_repo_id": "", "min_clients": "1"}
    response = b.client.post(
        "/experiments",
        data={**form, "site_ids": [str(secrets.operator_site_id)], "csrf_token": b.csrf()},
        follow_redirects=False,
    )
    assert response.status_code == 303, response.text
    page = html(b.get(response.headers["location"]))
    assert page.find("a", href=f"/sites/{secrets.operator_site_id}") is not None
    edit = html(b.get(response.headers["location"] + "/edit"))
    box = edit.find("input", attrs={"name": "site_ids", "value": str(secrets.operator_site_id)})
    assert box is not None and box.has_attr("checked")
    operator = browser(secrets.operator)
    assert form["name"] in operator.get("/experiments").text  # its site takes part now


def _enum(schema: dict[str, Any], defs: dict[str, Any]) -> list[str] | None:
    if "$ref" in schema:
        schema = defs[schema["$ref"].rsplit("/", 1)[-1]]
    return schema.get("enum")


def _form_fields() -> dict[str, tuple[dict[str, Any], dict[str, Any]]]:
    """Each input of the experiment form that edits one setting: its JSON schema (the API's) and
    the definitions the schema refers to."""
    create = ExperimentCreate.model_json_schema()
    partition = Partition.model_json_schema()
    dataset = DatasetRef.model_json_schema()
    fields = {
        name: (schema, create["$defs"])
        for name, schema in create["properties"].items()
        if schema.get("type") != "array" and "anyOf" not in schema
    }
    for name, schema in partition["properties"].items():
        if name != "dataset":
            fields[f"partition_{name}"] = (schema, partition.get("$defs", {}))
    fields["partition_repo_id"] = (dataset["properties"]["repo_id"], {})
    return fields


def test_the_form_has_every_setting_with_the_apis_default_bounds_and_choices(
    browser: Callable[..., Browser], secrets: Secrets
) -> None:
    soup = html(browser(secrets.admin).get("/experiments/new"))
    fields = _form_fields()
    assert {"policy", "num_rounds", "device", "partition_scheme"} <= set(fields)

    for name, (schema, defs) in fields.items():
        tag = soup.find(attrs={"name": name, "id": f"f-{name}"})
        assert tag is not None, f"no input for {name}"
        choices = _enum(schema, defs)
        if choices is not None:
            assert [option["value"] for option in tag.find_all("option")] == choices, name
            chosen = tag.find("option", selected=True)
            assert chosen is not None and chosen["value"] == schema["default"], name
            continue
        assert tag.get("maxlength") == (str(schema["maxLength"]) if "maxLength" in schema else None)
        low = schema.get("minimum", schema.get("exclusiveMinimum"))
        high = schema.get("maximum", schema.get("exclusiveMaximum"))
        assert (tag.get("min") and float(tag["min"])) == low, name
        assert (tag.get("max") and float(tag["max"])) == high, name
        value = tag.text if tag.name == "textarea" else str(tag.get("value"))
        if name == "partition_num_clients":  # required; the form proposes the minimum
            assert value == str(ExperimentCreate.model_fields["min_clients"].default)
        elif "default" not in schema or schema["default"] is None:
            assert value == "", name
        elif schema.get("type") in ("integer", "number"):
            assert float(value) == schema["default"], name
        else:
            assert value == schema["default"], name


def test_the_new_form_proposes_no_name(browser: Callable[..., Browser], secrets: Secrets) -> None:
    response = browser(secrets.admin).get("/experiments/new")

    assert input_value(response, "name") == ""
    assert "Undefined" not in response.text


def test_a_dataset_the_worker_could_not_read_is_refused_on_its_field_which_gets_focus(
    browser: Callable[..., Browser], secrets: Secrets, session: Session
) -> None:
    b = browser(secrets.admin)

    response = b.post("/experiments", {**VALID_FORM, "partition_root": "var/so100"})

    assert response.status_code == 422
    assert "relative path" in (field_error(response, "partition_root") or "")
    alert = html(response).find(id="form-error")
    assert alert is not None and "fix partition root" in alert.text
    focused = html(response).select("[autofocus]")
    assert [tag["name"] for tag in focused] == ["partition_root"]
    assert session.exec(select(Experiment)).first() is None


def test_the_first_of_several_bad_fields_gets_focus(
    browser: Callable[..., Browser], secrets: Secrets
) -> None:
    form = {**VALID_FORM, "num_rounds": "0", "learning_rate": "fast"}

    response = browser(secrets.admin).post("/experiments", form)

    alert = html(response).find(id="form-error")
    assert alert is not None and "fix num rounds, learning rate" in alert.text
    assert [tag["name"] for tag in html(response).select("[autofocus]")] == ["num_rounds"]
