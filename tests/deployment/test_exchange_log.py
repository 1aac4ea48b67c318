"""The ServerApp's record of each exchange through the SuperLink (its federation.log)."""

import time

from fedvla.orchestration.deployment.exchange_log import ExchangeLog, read_exchanges


def test_an_exchange_is_written_once_its_last_reply_is_in() -> None:
    lines: list[str] = []
    log = ExchangeLog(lines.append)

    log.pushed("train", 2, started=time.perf_counter())
    log.pulled(started=time.perf_counter(), replies=0)
    assert lines == []
    log.pulled(started=time.perf_counter(), replies=1)
    log.pulled(started=time.perf_counter(), replies=1)

    [record] = read_exchanges("\n".join(["INFO something else", *lines]))
    assert (record["message_type"], record["messages"], record["replies"]) == ("train", 2, 2)
    assert record["pull_requests"] == 3
    assert record["push_seconds"] >= 0 and record["until_last_reply_seconds"] >= 0


def test_an_exchange_left_unanswered_is_written_when_the_next_starts() -> None:
    lines: list[str] = []
    log = ExchangeLog(lines.append)

    log.pushed("train", 2, started=time.perf_counter())
    log.pulled(started=time.perf_counter(), replies=1)  # one site never answers (timeout)
    log.pushed("evaluate", 1, started=time.perf_counter())
    log.pulled(started=time.perf_counter(), replies=1)

    records = read_exchanges("\n".join(lines))
    assert [(r["message_type"], r["replies"]) for r in records] == [("train", 1), ("evaluate", 1)]
