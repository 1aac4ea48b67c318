"""``fedvla site keygen|check`` (run at a site) and ``fedvla superlink`` (run on the server).

Registered on the ``fedvla`` command in fedvla.cli.main. Errors are one message on stderr and exit
2; ``site check`` exits 1 when the dataset cannot train in the experiment.
"""

import json
import signal
import sys
import time
from pathlib import Path
from types import FrameType
from typing import Annotated

import typer

from fedvla.cli.support import fail, load_settings

site_cli = typer.Typer(
    help="At a robot site: the node's key pair, and the dataset checked before joining.",
    no_args_is_help=True,
)


@site_cli.command("keygen")
def site_keygen(
    directory: Annotated[
        Path, typer.Argument(help="Where to write the key pair (the kit's 'keys' folder).")
    ] = Path("keys"),
    force: Annotated[bool, typer.Option(help="Replace an existing key pair.")] = False,
) -> None:
    """Generate the SuperNode's P-384 key pair HERE and print the public key to register.

    The private key stays in DIRECTORY (mode 0600); only the public key goes to the server.
    DIRECTORY also records this Python, which the kit's supernode.sh runs the node with.
    """
    from fedvla.sites.keys import INTERPRETER_FILE, generate_node_keys

    try:
        files = generate_node_keys(directory, overwrite=force)
        (directory / INTERPRETER_FILE).write_text(sys.executable + "\n")
    except (FileExistsError, OSError) as error:
        raise fail(str(error)) from None
    typer.echo(f"Private key (keep it here, never send it): {files.private_key}", err=True)
    typer.echo("Public key (paste it into your site's page, or PATCH public_key):", err=True)
    typer.echo(files.public_pem.read_text(), nl=False)


@site_cli.command("check")
def site_check(
    dataset: Annotated[Path, typer.Option(help="The local LeRobot dataset folder.")],
    experiment_config: Annotated[
        Path | None,
        typer.Option(
            help="kit.json from the site's startup kit: check the dataset against its "
            "experiments. Without it: print the site's registration body."
        ),
    ] = None,
    name: Annotated[
        str | None, typer.Option(help="The site's name (default: the dataset folder's).")
    ] = None,
    public_key: Annotated[
        Path | None,
        typer.Option(
            help="The public key file from 'fedvla site keygen' (default: "
            "keys/supernode.pub.pem if it exists)."
        ),
    ] = None,
    hardware: Annotated[str, typer.Option(help="The site's hardware, e.g. 'RTX 4090'.")] = "",
    robot_type: Annotated[
        str | None, typer.Option(help="so100, so101 or other (default: the dataset's).")
    ] = None,
    token: Annotated[
        str | None,
        typer.Option(
            envvar="FEDVLA_TOKEN",
            show_default=False,
            help="The site's operator token (default: FEDVLA_TOKEN): with --experiment-config, "
            "the experiments are read as they are now from the server the kit names; without "
            "it, the kit's copy is used.",
        ),
    ] = None,
) -> None:
    """Read the local dataset (its meta/info.json and meta/): print the body that registers the
    site (POST /api/v1/sites), or, with --experiment-config, check it against the kit."""
    from pydantic import ValidationError

    from fedvla.engine.data.features import DatasetError
    from fedvla.sites.site_check import (
        KitError,
        check_site_dataset,
        current_kit,
        describe,
        read_kit,
        registration_body,
    )

    if experiment_config is None:
        try:
            body = registration_body(
                dataset,
                name=name,
                public_key=_public_key(public_key),
                hardware=hardware,
                robot_type=robot_type,
            )
        except DatasetError as error:
            raise fail(str(error)) from None
        except ValidationError as error:
            problems = "; ".join(
                f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors()
            )
            raise fail(f"the registration body is invalid: {problems}") from None
        typer.echo(json.dumps(body, indent=2))
        if "public_key" not in body:
            typer.echo(
                "No public key in the body: run 'fedvla site keygen keys' or pass --public-key.",
                err=True,
            )
        typer.echo(
            'Post it with your operator token: curl -X POST $API/sites -H "$AUTH" '
            "-H 'Content-Type: application/json' -d @body.json (or paste it on the Sites page).",
            err=True,
        )
        return
    try:
        kit, source = current_kit(read_kit(experiment_config), token)
        typer.echo(source)
        result = check_site_dataset(dataset, kit)
    except (KitError, DatasetError) as error:
        raise fail(str(error)) from None
    typer.echo(describe(result))
    if not result.ok:
        typer.echo("The dataset cannot train in this experiment: fix the errors above.", err=True)
        raise typer.Exit(code=1)
    typer.echo("The dataset fits: start the node (README.md, step 4).")


def _public_key(path: Path | None) -> str | None:
    """The key file's text; keygen's default file if none is named and it exists."""
    from fedvla.sites.keys import PUBLIC_PEM_FILE

    if path is None:
        default = Path("keys") / PUBLIC_PEM_FILE
        if not default.is_file():
            return None
        path = default
    try:
        return path.read_text()
    except (OSError, UnicodeDecodeError) as error:
        raise fail(f"cannot read the public key {path}: {error}") from None


def superlink_command(
    sync_every: Annotated[
        float, typer.Option(help="Seconds between syncs of approved sites' keys.")
    ] = 5.0,
) -> None:
    """Run the Flower SuperLink with TLS and SuperNode authentication, for approved sites only.

    The SuperLink binds FEDVLA_SUPERLINK_HOST (loopback); Caddy, its public front on
    FEDVLA_FLEET_HOST:FEDVLA_FLEET_PORT, forwards the Fleet API alone. Its registered keys
    follow the approved sites' keys: a revoked site is refused within --sync-every seconds.
    """
    from sqlmodel import Session

    from fedvla.core.db import make_engine
    from fedvla.sites.node_registry import sync_registrations
    from fedvla.sites.superlink import SuperLinkError, SuperLinkProcess

    settings = load_settings()
    process = SuperLinkProcess(settings)
    stop: list[int] = []

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        stop.append(signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    engine = make_engine(settings.database_url)
    try:
        process.start()
        process.wait_ready()
        front = (
            f"its front (Fleet API only) on {settings.fleet_host}:{settings.fleet_port}"
            if settings.superlink_front
            else "no front of ours (FEDVLA_SUPERLINK_FRONT=false)"
        )
        typer.echo(
            f"SuperLink on {settings.superlink_host}:{settings.superlink_port}, {front} "
            f"(sites dial {settings.superlink_address}); log: {process.log_path}"
        )
        while not stop:
            if process.process is not None and process.process.poll() is not None:
                raise SuperLinkError(f"flower-superlink exited; see {process.log_path}")
            try:
                with Session(engine) as session:
                    result = sync_registrations(session, settings)
            except SuperLinkError as error:
                typer.echo(f"sync failed, retrying: {error}", err=True)
            else:
                for name in result.registered:
                    typer.echo(f"registered site {name!r}")
                for node_id in result.unregistered:
                    typer.echo(f"unregistered node {node_id}")
            time.sleep(sync_every)
    except SuperLinkError as error:
        raise fail(str(error)) from None
    finally:
        process.stop()
        engine.dispose()
