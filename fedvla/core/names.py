"""The one rule for names people give things (experiments, sites, tokens): trimmed, not blank,
and free of control and format characters.

Bidirectional overrides and isolates (U+202A-U+202E, U+2066-U+2069), zero-width characters and
other format characters (Unicode category Cf) make a name display as something it is not; control
characters (Cc, NUL included) break logs and terminals. Both are refused, never silently dropped.
"""

import unicodedata
from typing import Annotated

from pydantic import AfterValidator, Field, TypeAdapter, ValidationError

from fedvla.core.errors import InvalidFields

MAX_NAME_LENGTH = 100
_REFUSED_CATEGORIES = {
    "Cc": "control",
    "Cf": "format",
    "Cs": "surrogate",
    "Co": "private-use",
    "Cn": "unassigned",
    "Zl": "line separator",
    "Zp": "paragraph separator",
}


def clean_name(value: str) -> str:
    """``value`` without surrounding whitespace; ValueError naming the reason it is refused."""
    value = value.strip()
    if not value:
        raise ValueError("must not be empty or only whitespace")
    for character in value:
        kind = _REFUSED_CATEGORIES.get(unicodedata.category(character))
        if kind is not None:
            label = unicodedata.name(character, "")
            raise ValueError(
                f"contains the {kind} character U+{ord(character):04X}"
                + (f" ({label})" if label else "")
            )
    return value


Name = Annotated[str, Field(min_length=1, max_length=MAX_NAME_LENGTH), AfterValidator(clean_name)]
"""A name in a request: ``name: Name``."""

_NAME = TypeAdapter(Name)


def checked_name(value: str, field: str = "name") -> str:
    """The same rule for names that do not come through a request model (the CLI): 422 naming
    ``field`` and the reason."""
    try:
        return _NAME.validate_python(value)
    except ValidationError as error:
        reason = error.errors()[0]["msg"].removeprefix("Value error, ")
        raise InvalidFields.one(field, reason) from None
