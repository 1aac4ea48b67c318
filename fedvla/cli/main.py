"""The ``fedvla`` command: serve, worker, db upgrade, token create/list/revoke/ensure-admin,
site keygen/check and superlink (fedvla.cli.deployment).

Settings come from FEDVLA_* variables (and .env). Errors are one message on stderr and exit 2.
"""

import gc
import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated

import typer
from sqlmodel import Session

from fedvla.cli.deployment import site_cli, superlink_command
from fedvla.cli.support import cli_errors, load_settings
from fedvla.core.config import Settings
from fedvla.core.db import make_engine
from fedvla.core.models import Role
from fedvla.core.services import tokens as token_service

LOCAL_WORKER_STOP_TIMEOUT_S = 15

cli = typer.Typer(
    name="fedvla",
    help="Federated fine-tuning of SmolVLA: web server, workers, database and API tokens.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
db_cli = typer.Typer(help="The database schema.", no_args_is_help=True)
token_cli = typer.Typer(
    help="API tokens (secrets are shown once, at creation).", no_args_is_help=True
)
cli.add_typer(db_cli, name="db")
cli.add_typer(token_cli, name="token")
cli.add_typer(site_cli, name="site")
cli.command("superlink")(superlink_command)


@contextmanager
def _session(settings: Settings) -> Iterator[Session]:
    engine = make_engine(settings.database_url)
    try:
        with cli_errors(), Session(engine) as session:
            yield session
    finally:
        engine.dispose()


def start_local_worker(settings: Settings) -> "subprocess.Popen[bytes]":
    """The embedded default's worker, in a child process beside the web server."""
    from fedvla.orchestration.main import start_local_worker as start

    return start(settings)


def _stop(process: "subprocess.Popen[bytes]") -> None:
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=LOCAL_WORKER_STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@cli.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Default: FEDVLA_HOST.")] = None,
    port: Annotated[int | None, typer.Option(help="Default: FEDVLA_PORT.")] = None,
    worker: Annotated[
        bool, typer.Option("--worker/--no-worker", help="Start a local worker beside the server.")
    ] = True,
) -> None:
    """Serve the dashboard and REST API (and, by default, a local worker)."""
    import uvicorn

    from fedvla.web.main import create_app

    settings = load_settings()
    with cli_errors():
        application = create_app(settings)
    local_worker = None
    # uvicorn stops on SIGTERM, then raises it again once it has restored this handler: make
    # that an exit through the finally below (SIGINT already is one, as KeyboardInterrupt).
    previous = signal.signal(signal.SIGTERM, _exit_on_signal)
    try:
        local_worker = start_local_worker(settings) if worker else None
        _freeze_startup_objects()
        uvicorn.run(
            application,
            host=host or settings.host,
            port=port or settings.port,
            proxy_headers=True,
            log_level="info",
        )
    finally:
        if local_worker is not None:
            # A second Ctrl-C or SIGTERM while the worker stops must not orphan it.
            interrupt = signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            _stop(local_worker)
            signal.signal(signal.SIGINT, interrupt)
        signal.signal(signal.SIGTERM, previous)


def _exit_on_signal(signum: int, _frame: object) -> None:
    raise SystemExit(0)


def _freeze_startup_objects() -> None:
    """Keeps what was imported and built before serving (about 200,000 objects that live as long
    as the process) out of the garbage collector's full passes: under load one ran about once a
    second and stopped every request for about 100 ms (2 CPUs, bench/orchestration.py's REST
    case); now it scans only what requests left behind."""
    gc.collect()
    gc.freeze()


@cli.command("worker")
def worker_command(
    name: Annotated[str | None, typer.Option(help="Worker name; default <queue>@<host>.")] = None,
) -> None:
    """Run a GPU worker that takes federation runs from the broker's queue."""
    from fedvla.orchestration.main import run_worker

    settings = load_settings()
    with cli_errors():
        run_worker(settings, name=name)


@db_cli.command("upgrade")
def db_upgrade(
    revision: Annotated[str, typer.Argument(help="Alembic revision.")] = "head",
) -> None:
    """Create or migrate the database schema."""
    from fedvla.core.migrate import upgrade_database

    settings = load_settings()
    with cli_errors():
        upgrade_database(settings.database_url, revision)
    typer.echo(f"Database upgraded to {revision}.")


@token_cli.command("create")
def token_create(
    name: Annotated[str, typer.Argument(help="A unique name, e.g. lab-a-operator.")],
    role: Annotated[Role, typer.Option(help="admin, operator or viewer.")],
    site: Annotated[
        int | None,
        typer.Option(
            help="Site id (operator tokens only). Without it, an operator token may register"
            " one site and then belongs to it."
        ),
    ] = None,
) -> None:
    """Create a token; the secret is printed on stdout, once."""
    with _session(load_settings()) as session:
        token, secret = token_service.create_token(
            session=session, name=name, role=role, site_id=site
        )
    typer.echo(f"Created {token.role.value} token '{token.name}'. Store it now:", err=True)
    if token.role == Role.operator and token.site_id is None:
        typer.echo("It has no site yet: it may register one site, then belongs to it.", err=True)
    typer.echo(secret)


@token_cli.command("list")
def token_list() -> None:
    """List tokens (never their secrets)."""
    with _session(load_settings()) as session:
        tokens, _count = token_service.list_tokens(session=session, limit=10_000)
    typer.echo(f"{'ID':>4}  {'NAME':<24} {'ROLE':<9} {'SITE':>4}  {'PREFIX':<13} STATE  LAST USED")
    for token in tokens:
        state = "revoked" if token.revoked else "live"
        last_used = f"{token.last_used_at:%Y-%m-%d %H:%M}" if token.last_used_at else "never"
        site = "" if token.site_id is None else str(token.site_id)
        typer.echo(
            f"{token.id:>4}  {token.name:<24} {token.role.value:<9} {site:>4}  "
            f"{token.prefix:<13} {state:<6} {last_used}"
        )


@token_cli.command("revoke")
def token_revoke(name: Annotated[str, typer.Argument(help="The token's name.")]) -> None:
    """Revoke a token: requests with it are refused from now on."""
    with _session(load_settings()) as session:
        token = token_service.get_token_by_name(session=session, name=name)
        token_service.revoke_token(session=session, token=token)
    typer.echo(f"Revoked token '{name}'.")


@token_cli.command("ensure-admin")
def token_ensure_admin() -> None:
    """Create an admin token if there is no live one, and print it (once)."""
    with _session(load_settings()) as session:
        secret = token_service.ensure_admin(session=session)
    if secret is None:
        typer.echo("An admin token exists already (see 'fedvla token list').")
    else:
        typer.echo(f"Admin API token (shown only now, store it): {secret}")


def main() -> None:
    cli()
