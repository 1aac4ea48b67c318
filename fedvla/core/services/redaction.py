"""What only admins see: the server's filesystem paths.

Checkpoint events carry the folder a checkpoint was written to, and errors quote the files they
failed on (``[Errno 2] No such file or directory: '/srv/fedvla/runs/3/...'``). Admins need them to
find the files; other readers learn the server's layout from them and nothing they can act on.
For them, values under a path-like key are replaced whole, absolute paths inside any text
are replaced by ``<server path>``, and an OSError's errno and path by a plain sentence. API
answers, event streams and pages all go through here.
"""

import re
from typing import Any

from pydantic import BaseModel

from fedvla.core.models import ApiToken, Role

HIDDEN_PATH = "<server path>"
_ABSOLUTE_PATH = re.compile(r"(?<![\w.~:/\\-])/[^\s'\"`<>|,;:()\[\]{}]+")
_OS_ERROR = re.compile(r"\[Errno \d+\] ([^:'\"]+)(?:: '?<server path>'?)?")
"""An OSError's text once its path is hidden: ``[Errno 2] No such file or directory: '...'``."""
_PATH_KEYS = ("path", "dir", "directory", "file", "root")


def _is_path_key(key: object) -> bool:
    name = str(key).lower()
    return any(name == k or name.endswith(("_" + k, "-" + k)) for k in _PATH_KEYS)


def _os_error(match: re.Match[str]) -> str:
    return f"a file on the server could not be used ({match.group(1).strip().lower()})"


def hide_paths(value: Any) -> Any:
    """``value`` (text, JSON-like data or a pydantic model) with every server path replaced."""
    if isinstance(value, str):
        hidden = _OS_ERROR.sub(_os_error, _ABSOLUTE_PATH.sub(HIDDEN_PATH, value))
        return value if hidden == value else hidden  # keeps a StrEnum member an enum
    if isinstance(value, dict):
        return {
            key: HIDDEN_PATH if _is_path_key(key) and isinstance(item, str) else hide_paths(item)
            for key, item in value.items()
        }
    if isinstance(value, list | tuple):
        return [hide_paths(item) for item in value]
    if isinstance(value, BaseModel):
        return value.model_copy(update=hide_paths(dict(value)))
    return value


def shows_paths(token: ApiToken | None) -> bool:
    return token is not None and token.role == Role.admin


def for_reader(token: ApiToken | None, value: Any) -> Any:
    """``value`` as ``token`` may see it: unchanged for admins, paths hidden for the others."""
    return value if shows_paths(token) else hide_paths(value)


def model_for_reader[M: BaseModel](token: ApiToken | None, model: M) -> M:
    """A response model as ``token`` may see it (every field through for_reader)."""
    return model if shows_paths(token) else hide_paths(model)
