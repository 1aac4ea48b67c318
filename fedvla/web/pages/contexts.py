"""Each page's template context, as a dataclass whose fields say what they hold.

``render`` passes the dataclass as ``page`` and each field by name. Each field is
``Annotated[type, "what it holds"]``; a test checks that every field says what it holds and that
templates use only names their page declares.
"""

import dataclasses
from dataclasses import dataclass, field
from typing import Annotated, Any
from urllib.parse import urlencode

from fedvla.core.errors import FieldProblem
from fedvla.core.experiment_config import Evaluation
from fedvla.core.models import (
    ApiToken,
    Checkpoint,
    ClientMetric,
    RoundMetric,
    Run,
    RunEvent,
    SiteAudit,
)
from fedvla.core.schemas.experiments import ExperimentPublic
from fedvla.core.schemas.sites import SitePublic
from fedvla.core.services.compatibility import CompatibilityReport
from fedvla.core.services.contributions import SiteContribution
from fedvla.core.services.run_compare import SettingRow
from fedvla.core.services.run_search import RunQuery, RunSort, RunSummary, SortOrder
from fedvla.core.services.workers import WorkerState
from fedvla.sites.superlink_admin import SiteNode

FORM_WIDE = "__all__"
"""Errors that belong to no single input."""


@dataclass
class FormState:
    """A form as the user filled it in: values as entered, and problems by field name."""

    values: Annotated[dict[str, str], "Field name -> the value to show in the input."]
    errors: Annotated[dict[str, list[str]], "Field name -> what is wrong with it."] = field(
        default_factory=dict
    )

    def error(self, name: str) -> str:
        return "; ".join(self.errors.get(name, []))

    @property
    def invalid_fields(self) -> list[str]:
        """The inputs with an error, in the order their errors came."""
        return [name for name in self.errors if name != FORM_WIDE]

    @property
    def first_invalid(self) -> str | None:
        """The input the page focuses (autofocus) so the user lands on the first fix."""
        return next(iter(self.invalid_fields), None)


@dataclass
class ErrorPage:
    status_code: Annotated[int, "The HTTP status, as the API would answer."]
    detail: Annotated[str, "The API's detail sentence."]
    errors: Annotated[list[FieldProblem], "Field problems, if specific fields are at fault."]


@dataclass
class SignInPage:
    next: Annotated[str, "Where to go after signing in."]
    error: Annotated[str | None, "Why the last attempt failed."] = None


@dataclass
class ExperimentRow:
    experiment: Annotated[ExperimentPublic, "The experiment as the API returns it."]
    latest_run: Annotated[Run | None, "Its newest run, if any."]


@dataclass
class ExperimentsPage:
    rows: Annotated[list[ExperimentRow], "Experiments the token may see, newest first."]
    count: Annotated[int, "How many there are in all."]


@dataclass
class ExperimentFormPage:
    action: Annotated[str, "URL the form posts to."]
    heading: Annotated[str, "Create, edit or clone."]
    form: Annotated[FormState, "Values and errors."]
    sites: Annotated[list[SitePublic], "Sites that a deployment experiment can name."]
    choices: Annotated[dict[str, list[str]], "Allowed values of each select."]
    bounds: Annotated[dict[str, str], "Each input's bound attributes (min, max, maxlength)."]
    cancel_url: Annotated[str, "Where Cancel leads."]


@dataclass
class ExperimentPage:
    experiment: Annotated[ExperimentPublic, "The experiment as the API returns it."]
    runs: Annotated[list[Run], "Its runs, newest first."]
    sites: Annotated[list[SitePublic], "The sites it names (deployment mode)."]


SORT_FIRST_ORDER = {
    RunSort.experiment: SortOrder.asc,
    RunSort.status: SortOrder.asc,
    RunSort.created: SortOrder.desc,
    RunSort.duration: SortOrder.desc,
    RunSort.final_loss: SortOrder.asc,
}
"""The order a column sorts in when first clicked: names A-Z, the newest, longest, lowest loss."""


def _query_params(query: RunQuery) -> dict[str, str]:
    """A runs query as the list's URL parameters (run_query_params reads them back)."""
    return {
        "q": query.text,
        "experiment_id": "" if query.experiment_id is None else str(query.experiment_id),
        "status": query.status.value if query.status else "",
        "created_from": query.created_from.isoformat() if query.created_from else "",
        "created_to": query.created_to.isoformat() if query.created_to else "",
        "sort": query.sort.value,
        "order": query.order.value,
        "offset": str(query.offset),
        "limit": str(query.limit),
    }


@dataclass
class RunsPage:
    rows: Annotated[list[RunSummary], "A page of the matching runs, with duration and final loss."]
    count: Annotated[int, "How many runs match in all."]
    query: Annotated[RunQuery, "The search, filters, sort and page asked for."]
    experiments: Annotated[list[tuple[int, str]], "Experiments to filter by: id and name."]
    final_loss_meaning: Annotated[str, "What the final loss column holds."]

    def link(self, **changes: Any) -> str:
        """This list's URL with ``changes`` to its query; defaults are left out."""
        wanted = _query_params(dataclasses.replace(self.query, **changes))
        default = _query_params(RunQuery())
        kept = {name: value for name, value in wanted.items() if value not in ("", default[name])}
        return "/runs" + (f"?{urlencode(kept)}" if kept else "")

    def sort_link(self, key: str) -> str:
        sort = RunSort(key)
        if sort == self.query.sort:
            order = SortOrder.asc if self.query.order == SortOrder.desc else SortOrder.desc
        else:
            order = SORT_FIRST_ORDER[sort]
        return self.link(sort=sort, order=order, offset=0)

    def aria_sort(self, key: str) -> str:
        if RunSort(key) != self.query.sort:
            return "none"
        return "ascending" if self.query.order == SortOrder.asc else "descending"

    @property
    def previous_offset(self) -> int | None:
        offset = self.query.offset
        return max(0, offset - self.query.limit) if offset > 0 else None

    @property
    def next_offset(self) -> int | None:
        following = self.query.offset + self.query.limit
        return following if following < self.count else None


@dataclass
class Progress:
    round: Annotated[int, "Rounds finished."]
    num_rounds: Annotated[int, "The last round (a resumed run runs first_round + 1 to it)."]
    first_round: Annotated[int, "Round numbering starts after this one (resumed runs)."]
    elapsed_s: Annotated[float | None, "Seconds since the run started."]
    eta_s: Annotated[float | None, "Estimated seconds to go, from the mean round duration."]
    waiting_s: Annotated[float | None, "Seconds since a run not yet started was queued."] = None
    live: Annotated[bool, "Queued or running: the page ticks its clock."] = False

    @property
    def percent(self) -> int:
        total = self.num_rounds - self.first_round
        done = max(0, self.round - self.first_round)
        return 100 if total <= 0 else min(100, round(100 * done / total))


@dataclass
class RunPage:
    run: Annotated[Run, "The run as the API returns it."]
    experiment_name: Annotated[str, "Its experiment's name."]
    progress: Annotated[Progress, "Round i of N, elapsed, ETA."]
    rounds: Annotated[list[RoundMetric], "Per-round metrics."]
    clients: Annotated[list[ClientMetric], "Per-round, per-client metrics."]
    checkpoints: Annotated[list[Checkpoint], "Checkpoints kept."]
    last_round: Annotated[
        int, "The experiment's last round now: a checkpoint before it can be resumed from."
    ]
    log: Annotated[list[RunEvent], "The newest events of the run's log."]
    last_event_id: Annotated[
        int, "Id of the newest event shown, so the live stream goes on from it."
    ]
    chart_data: Annotated[dict[str, Any], "Round and client metrics for the charts, as JSON."]
    events_url: Annotated[str, "The run's server-sent events stream."]
    evaluation: Annotated[
        Evaluation | None, "What the run evaluates, or that evaluation is off."
    ] = None


@dataclass
class NotesSection:
    """What the run page's notes section (_run_notes.html) needs; htmx gets it alone on save."""

    run: Annotated[Run, "The run whose notes these are."]


@dataclass
class ComparePage:
    runs: Annotated[list[Run], "The runs compared."]
    candidates: Annotated[list[Run], "Runs that can be picked."]
    series: Annotated[list[dict[str, Any]], "Per run: label and per-round losses, as JSON."]
    experiment_names: Annotated[dict[int, str], "Experiment id -> name."]
    settings: Annotated[
        list[SettingRow], "The settings table's rows (only those that differ if asked)."
    ]
    settings_count: Annotated[int, "How many settings the runs have in all."]
    differing_count: Annotated[int, "How many of them differ between the runs."]
    only_differences: Annotated[bool, "Whether the settings table shows only differing rows."]
    evaluations: Annotated[
        list[Evaluation | None], "Per run compared: what it evaluates, or that it does not."
    ] = field(default_factory=list)
    any_server_eval: Annotated[bool, "Whether some compared run makes server evaluation."] = False
    any_federated_eval: Annotated[bool, "Whether some compared run makes federated evaluation."] = (
        False
    )


@dataclass
class SitesPage:
    sites: Annotated[list[SitePublic], "Sites the token may see."]
    pending: Annotated[list[SitePublic], "Sites waiting for an admin's decision."]


@dataclass
class SitePage:
    site: Annotated[SitePublic, "The site as the API returns it."]
    audit: Annotated[list[SiteAudit], "Its audit log."]
    contributions: Annotated[list[SiteContribution], "Its contribution per run."]
    compatibility: Annotated[
        list[CompatibilityReport], "Its declaration checked alone, then against each experiment."
    ]
    kit_unavailable: Annotated[
        str | None, "Why no startup kit can be made on this server (its address), if so."
    ] = None


@dataclass
class SiteNodePage:
    site_id: Annotated[int, "The site."]
    node: Annotated[SiteNode | None, "Its SuperNode as the SuperLink sees it."]
    error: Annotated[str | None, "Why the SuperLink could not be asked."]


@dataclass
class SiteFormPage:
    action: Annotated[str, "URL the form posts to."]
    heading: Annotated[str, "Register or edit."]
    form: Annotated[FormState, "Values and errors."]
    robot_types: Annotated[list[str], "Robot types to pick from."]
    cancel_url: Annotated[str, "Where Cancel leads."]


@dataclass
class WorkersPage:
    workers: Annotated[list[WorkerState], "Registered workers, and whether each is online."]
    queued: Annotated[list[Run], "Runs waiting for a worker, oldest first."]
    running: Annotated[list[Run], "Runs being run."]
    experiment_names: Annotated[dict[int, str], "Experiment id -> name."]


@dataclass
class TokensPage:
    tokens: Annotated[list[ApiToken], "Every token, revoked ones too (never their secrets)."]
    sites: Annotated[list[SitePublic], "Sites an operator token can belong to."]
    roles: Annotated[list[str], "Roles to pick from."]
    form: Annotated[FormState, "The new-token form."]
    created: Annotated[tuple[str, str] | None, "Name and secret of the token just made, once."]
