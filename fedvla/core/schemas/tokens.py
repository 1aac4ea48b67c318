"""API tokens as admins create and list them."""

from typing import Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from fedvla.core.models import Role
from fedvla.core.names import Name
from fedvla.core.schemas.common import RowId, UtcDatetime


class TokenCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Name = Field(examples=["lab-a-operator"])
    role: Role = Field(examples=["operator"])
    site_id: RowId | None = Field(
        None,
        description="The site an operator token belongs to (operators only). An operator token"
        " without one may register a single site, and then belongs to it.",
        examples=[1],
    )

    @model_validator(mode="after")
    def _site_matches_role(self) -> Self:
        if self.role != Role.operator and self.site_id is not None:
            raise ValueError("site_id: only operator tokens belong to a site")
        return self


class TokenPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    name: str
    role: Role
    site_id: int | None
    prefix: str = Field(description="The secret's first characters, to recognise it.")
    created_at: UtcDatetime
    last_used_at: UtcDatetime | None
    revoked: bool


class TokenCreated(TokenPublic):
    token: str = Field(
        description="The secret. Shown only in this answer; store it now.",
        examples=["fvla_3q2-Yh8...R0"],
    )


class TokensPublic(BaseModel):
    data: list[TokenPublic]
    count: int
