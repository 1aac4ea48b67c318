"""Sites as admins register them and operators keep them up to date."""

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator
from sqlmodel.main import SQLModelConfig

from fedvla.core.models import RobotType, SiteBase, SiteFeatures, SiteStatus
from fedvla.core.names import Name
from fedvla.core.public_keys import normalise_public_key
from fedvla.core.schemas.common import UtcDatetime
from fedvla.core.services.compatibility import CompatibilityReport

SITE_EXAMPLE: dict[str, Any] = {
    "name": "lab-a",
    "organisation": "Lab A Robotics",
    "contact": "ops@lab-a.example",
    "robot_type": "so100",
    "dataset": "lab-a/so100_pick_cube",
    "features": {
        "state_dim": 6,
        "action_dim": 6,
        "camera_keys": ["observation.images.top"],
        "fps": 30,
        "episodes": 50,
        "frames": 20000,
    },
    "hardware": "RTX 4090",
    "public_key": "-----BEGIN PUBLIC KEY-----\n...\n-----END PUBLIC KEY-----\n",
}


def _check_public_key(value: str | None) -> str | None:
    if value is None or not value.strip():
        return None
    return normalise_public_key(value)  # InvalidPublicKey (a ValueError) -> 422 naming it


class SiteCreate(SiteBase):
    model_config = SQLModelConfig(extra="forbid", json_schema_extra={"examples": [SITE_EXAMPLE]})
    _public_key_is_pem = field_validator("public_key")(_check_public_key)


class SiteUpdate(BaseModel):
    """Fields to change. Changing the public key of an approved site sends it back to pending."""

    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"hardware": "2x RTX 4090"}]}
    )

    name: Name | None = None
    organisation: str | None = Field(None, max_length=200)
    contact: str | None = Field(None, max_length=200)
    robot_type: RobotType | None = None
    dataset: str | None = Field(None, min_length=1, max_length=500)
    features: SiteFeatures | None = None
    hardware: str | None = Field(None, max_length=500)
    public_key: str | None = None

    _public_key_is_pem = field_validator("public_key")(_check_public_key)


class SitePublic(SiteBase):
    id: int
    status: SiteStatus
    status_reason: str
    created_at: UtcDatetime
    approved_at: UtcDatetime | None
    revoked_at: UtcDatetime | None


class SiteRegistered(SitePublic):
    """A new site with its compatibility reports (fedvla.core.services.compatibility)."""

    compatibility: list[CompatibilityReport]


class SitesPublic(BaseModel):
    data: list[SitePublic]
    count: int


class StatusChange(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: str = Field("", max_length=500, examples=["Dataset and key checked on a call"])


class SiteAuditPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    site_id: int | None = Field(description="Null once the site was deleted.")
    site_name: str = Field(description="The site's name when the row was written.")
    action: str = Field(examples=["approve"])
    actor: str = Field(description="Name of the token that acted.")
    reason: str
    at: UtcDatetime
