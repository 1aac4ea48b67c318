"""Standalone: `python -m fedvla.engine.federation --config cfg.json --output out/` (JSON lines)."""

import argparse
import sys
from pathlib import Path

from pydantic import ValidationError

from fedvla.core.experiment_config import FederationConfig
from fedvla.engine.federation.reporter import JsonLinesReporter


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fedvla.engine.federation", description=__doc__)
    parser.add_argument("--config", type=Path, required=True, help="FederationConfig as JSON")
    parser.add_argument("--output", type=Path, required=True, help="folder for events, checkpoints")
    parser.add_argument("--data-dir", type=Path, help="assets (tiny VLM); default <output>/data")
    args = parser.parse_args(argv)
    try:
        config = FederationConfig.model_validate_json(args.config.read_text())
    except (OSError, ValidationError) as error:
        print(f"error: bad config {args.config}: {error}", file=sys.stderr)
        return 2
    from fedvla.engine.data.features import DatasetError
    from fedvla.engine.federation.runner import run_federation
    from fedvla.engine.federation.server_app import FederationError
    from fedvla.engine.policy.loading import PolicySourceError

    reporter = JsonLinesReporter(args.output / "events.jsonl")
    try:
        run_federation(
            config, reporter, output_dir=args.output, data_dir=args.data_dir or args.output / "data"
        )
    except (DatasetError, PolicySourceError, FederationError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"done: events in {args.output / 'events.jsonl'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
