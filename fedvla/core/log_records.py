"""Records written into a process's log as one line each: a prefix, then a JSON object.

The site node writes what each task cost, the ServerApp what each exchange through the
SuperLink cost; tests and benchmarks read them back from the logs.
"""

import json
from typing import Any


def log_record(prefix: str, record: dict[str, Any]) -> str:
    return prefix + json.dumps(record)


def read_log_records(text: str, prefix: str) -> list[dict[str, Any]]:
    """The records written with ``prefix`` in a log's text, in order."""
    records = []
    for line in text.splitlines():
        _, found, rest = line.partition(prefix)
        if found and rest.startswith("{"):
            records.append(json.loads(rest))
    return records
