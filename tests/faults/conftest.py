"""The orchestration suite's fixtures: real workers, a live server, the tiny federation."""

from tests.orchestration.conftest import (  # noqa: F401  (fixtures)
    admin,
    engine,
    make_experiment,
    redis_broker_base,
    session,
    start_worker,
)
from tests.orchestration.test_celery_runs import (  # noqa: F401  (fixtures)
    broker_settings,
    experiment_id,
    fast_settings,
    federation_assets,
)
