"""What every ``fedvla`` command shares: settings, and errors as one message on stderr, exit 2."""

from collections.abc import Iterator
from contextlib import contextmanager

import typer
from pydantic import ValidationError
from sqlalchemy.exc import SQLAlchemyError

from fedvla.core.config import Settings
from fedvla.core.errors import DomainError


def fail(message: str) -> typer.Exit:
    typer.echo(f"Error: {message}", err=True)
    return typer.Exit(code=2)


@contextmanager
def cli_errors() -> Iterator[None]:
    """Turns what users can cause (bad settings, bad arguments, no database) into messages."""
    try:
        yield
    except DomainError as error:
        reasons = "; ".join(f"{p.field}: {p.reason}" for p in error.errors)
        raise fail(f"{error.detail}{f' ({reasons})' if reasons else ''}") from None
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'settings'}: {e['msg']}" for e in error.errors()
        )
        raise fail(f"invalid settings: {problems}") from None
    except SQLAlchemyError as error:
        first_line = str(error).splitlines()[0]
        raise fail(f"database: {first_line} (did you run 'fedvla db upgrade'?)") from None
    except OSError as error:
        raise fail(str(error)) from None


def load_settings() -> Settings:
    with cli_errors():
        return Settings()
