"""The worker's Reporter: what the federation reports goes to the database, then to Redis.

Each call is one short transaction: the metric or checkpoint row, the run's current round and the
RunEvent commit together, so a reader never sees an event whose row is missing.
"""

from dataclasses import asdict

from sqlalchemy import delete, update
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from fedvla.core.db import make_engine
from fedvla.core.models import Checkpoint, ClientMetric, RoundMetric, Run
from fedvla.core.services.events import EventPublisher, append_event
from fedvla.engine.federation.reporter import CheckpointReport, RoundReport


class DbReporter:
    def __init__(self, database_url: str, redis_url: str, run_id: int) -> None:
        self.run_id = run_id
        self.engine: Engine = make_engine(database_url)
        self.publisher = EventPublisher(redis_url)

    def log(self, message: str) -> None:
        with Session(self.engine) as session:
            event = append_event(session, self.run_id, "log", message)
            session.commit()
            self.publisher.publish([event])

    def round_finished(self, report: RoundReport) -> None:
        with Session(self.engine) as session:
            session.add(
                RoundMetric(
                    run_id=self.run_id,
                    round=report.round,
                    eval_loss=report.eval_loss,
                    eval_action_mse=report.eval_action_mse,
                    fed_eval_loss=report.fed_eval_loss,
                    fed_eval_action_mse=report.fed_eval_action_mse,
                    fed_eval_samples=report.fed_eval_samples,
                    train_loss=report.train_loss,
                    duration_s=report.duration_s,
                    bytes_sent=report.bytes_sent,
                    bytes_received=report.bytes_received,
                    clients_sampled=report.clients_sampled,
                    clients_succeeded=report.clients_succeeded,
                    clients_failed=report.clients_failed,
                )
            )
            for client in report.clients:
                session.add(ClientMetric(run_id=self.run_id, round=report.round, **asdict(client)))
            session.execute(
                update(Run).where(col(Run.id) == self.run_id).values(current_round=report.round)
            )
            event = append_event(
                session, self.run_id, "round", _round_message(report), asdict(report)
            )
            session.commit()
            self.publisher.publish([event])

    def checkpoint_saved(self, report: CheckpointReport) -> None:
        with Session(self.engine) as session:
            existing = session.exec(
                select(Checkpoint).where(
                    Checkpoint.run_id == self.run_id, Checkpoint.round == report.round
                )
            ).first()
            checkpoint = existing or Checkpoint(
                run_id=self.run_id, round=report.round, path="", sha256=""
            )
            checkpoint.path = report.path
            checkpoint.sha256 = report.sha256
            checkpoint.size_bytes = report.size_bytes
            checkpoint.eval_loss = report.eval_loss
            session.add(checkpoint)
            event = append_event(
                session,
                self.run_id,
                "checkpoint",
                f"checkpoint of round {report.round} saved",
                {**asdict(report), "removed": False},
            )
            session.commit()
            self.publisher.publish([event])

    def checkpoint_removed(self, round: int) -> None:
        with Session(self.engine) as session:
            session.execute(
                delete(Checkpoint).where(
                    col(Checkpoint.run_id) == self.run_id, col(Checkpoint.round) == round
                )
            )
            event = append_event(
                session,
                self.run_id,
                "checkpoint",
                f"checkpoint of round {round} removed (retention)",
                {"round": round, "removed": True},
            )
            session.commit()
            self.publisher.publish([event])

    def close(self) -> None:
        self.publisher.close()
        self.engine.dispose()


def _round_message(report: RoundReport) -> str:
    parts = [f"round {report.round}"]
    if report.train_loss is not None:
        parts.append(f"train loss {report.train_loss:.4f}")
    if report.eval_loss is not None:
        parts.append(f"server eval loss {report.eval_loss:.4f}")
    if report.fed_eval_loss is not None:
        parts.append(f"federated eval loss {report.fed_eval_loss:.4f}")
    parts.append(f"{report.clients_succeeded}/{report.clients_sampled} clients")
    return ", ".join(parts)
