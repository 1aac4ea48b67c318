"""The federation's configuration as the engine imports it.

FederationConfig and its parts are defined once, in app.core.experiment_config, which the web app
validates experiments with too; this module names them for the engine's modules.
"""

from app.core.experiment_config import (
    TINY_POLICY,
    DatasetRef,
    FederationConfig,
    Mode,
    Partition,
    ResumePoint,
    Strategy,
)

__all__ = [
    "TINY_POLICY",
    "DatasetRef",
    "FederationConfig",
    "Mode",
    "Partition",
    "ResumePoint",
    "Strategy",
]
