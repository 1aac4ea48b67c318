"""What the signed-in token may do, asked of the API's own role checks (fedvla.web.api.deps).

Templates show a button only where ``can.<action>`` is true; the page handlers enforce the same
checks through the same dependencies, so a hidden button and a refused request never disagree.
"""

import typing
from collections.abc import Callable
from typing import Any

from fedvla.core.errors import DomainError
from fedvla.core.models import ApiToken
from fedvla.core.services.run_notes import can_write_notes
from fedvla.web.api.deps import AdminToken, SiteEditorToken, SiteRegistrarToken, ensure_site_access


def _checker(alias: Any) -> Callable[[ApiToken], ApiToken]:
    """The role check inside an ``Annotated[ApiToken, Depends(check)]`` alias of
    fedvla.web.api.deps."""
    depends = typing.get_args(alias)[1]
    check: Callable[[ApiToken], ApiToken] = depends.dependency
    return check


admin_check = _checker(AdminToken)
site_editor_check = _checker(SiteEditorToken)
site_registrar_check = _checker(SiteRegistrarToken)


def _passes(check: Callable[[], object]) -> bool:
    try:
        check()
    except DomainError:
        return False
    return True


class Permissions:
    """``can.manage`` (experiments, runs, site decisions), ``can.register_site``,
    ``can.write_notes`` and ``can.edit_site(id)``."""

    def __init__(self, token: ApiToken | None) -> None:
        self._token = token

    @property
    def manage(self) -> bool:
        token = self._token
        return token is not None and _passes(lambda: admin_check(token))

    @property
    def register_site(self) -> bool:
        token = self._token
        return token is not None and _passes(lambda: site_registrar_check(token))

    @property
    def write_notes(self) -> bool:
        """Notes on runs (the run page checks, as the API does, that the run is readable)."""
        return can_write_notes(self._token)

    def edit_site(self, site_id: int) -> bool:
        token = self._token
        if token is None:
            return False
        return _passes(lambda: site_editor_check(token)) and _passes(
            lambda: ensure_site_access(token, site_id)
        )
