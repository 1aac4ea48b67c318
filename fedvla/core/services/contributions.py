"""What each site contributed to each run: rounds taken part in, samples, time, traffic."""

from dataclasses import dataclass

from sqlalchemy import func, select
from sqlmodel import Session, col

from fedvla.core.models import ClientMetric


@dataclass(frozen=True)
class SiteContribution:
    run_id: int
    rounds: int
    samples: int
    episodes: int
    seconds: float
    bytes_sent: int
    bytes_received: int
    failures: int


def site_contributions(session: Session, site_id: int) -> list[SiteContribution]:
    """Per run the site took part in (newest run first); failed rounds count as failures only."""
    ok = col(ClientMetric.ok)
    query = (
        select(
            col(ClientMetric.run_id),
            func.count(func.distinct(ClientMetric.round)).filter(ok),
            func.coalesce(func.sum(ClientMetric.samples).filter(ok), 0),
            func.coalesce(func.sum(ClientMetric.episodes).filter(ok), 0),
            func.coalesce(func.sum(ClientMetric.seconds).filter(ok), 0.0),
            func.coalesce(func.sum(ClientMetric.bytes_sent), 0),
            func.coalesce(func.sum(ClientMetric.bytes_received), 0),
            func.count().filter(~ok),
        )
        .where(col(ClientMetric.site_id) == site_id)
        .group_by(col(ClientMetric.run_id))
        .order_by(col(ClientMetric.run_id).desc())
    )
    return [
        SiteContribution(
            run_id=run_id,
            rounds=int(rounds),
            samples=int(samples),
            episodes=int(episodes),
            seconds=float(seconds),
            bytes_sent=int(sent),
            bytes_received=int(received),
            failures=int(failures),
        )
        for run_id, rounds, samples, episodes, seconds, sent, received, failures in session.execute(
            query
        )
    ]
