"""Reduced-precision transport: does sending the update in bfloat16 change what is learned?

Runs the learning benchmark's FedAvg IID federation (bench/learning_parity.py: tiny policy,
3 clients, synthetic dataset, same seeds) once per transport dtype (config.transport_dtype) and
compares the final held-out eval loss with float32's, and the bytes the clients actually sent.
Target: eval loss within 2% of float32. (Bytes for smolvla_base's shape: bench/comm_bytes.py.)
Writes bench/results/transport_precision.{json,md}.

    .venv/bin/python bench/transport_precision.py [--dtypes float32,bfloat16] [--quick]
"""

import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

from common import Recorder, bench_parser, markdown_table
from learning_parity import QUICK, Sizes, federation_config, make_dataset, run_federated

TARGET_RELATIVE_LOSS = 0.02
COMMAND = ".venv/bin/python bench/transport_precision.py"


def main(argv: list[str] | None = None) -> int:
    parser = bench_parser(__doc__)
    parser.add_argument("--dtypes", default="float32,bfloat16")
    args = parser.parse_args(argv)
    dtypes = args.dtypes.split(",")
    if dtypes[0] != "float32":
        parser.error("--dtypes must start with float32, the reference")
    sizes = QUICK if args.quick else Sizes()
    recorder = Recorder(
        "transport_precision",
        "Final held-out eval loss of FedAvg IID (learning benchmark) with the update sent in "
        "reduced precision, relative to float32 transport.",
        COMMAND + (" --quick" if args.quick else ""),
    )
    runs: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-transport-") as scratch:
        work = Path(scratch)
        dataset = make_dataset(work, sizes)
        for dtype in dtypes:
            config = federation_config(
                dataset, sizes, strategy="fedavg", scheme="iid", transport_dtype=dtype
            )
            runs[dtype] = run_federated(config, work, work / "data")
            print(f"{dtype}: {runs[dtype]['eval_loss']}")
    reference = runs["float32"]
    rows = []
    verdicts = {}
    for dtype, run in runs.items():
        final = run["eval_loss"][-1]
        relative = final / reference["eval_loss"][-1] - 1.0
        byte_ratio = reference["bytes_received_per_round"][0] / run["bytes_received_per_round"][0]
        run.update(final_eval_loss=final, relative_to_float32=relative, bytes_ratio=byte_ratio)
        met = abs(relative) <= TARGET_RELATIVE_LOSS
        if dtype != "float32":
            verdicts[dtype] = {"relative_eval_loss": relative, "met": met}
        rows.append(
            [
                dtype,
                final,
                f"{relative:+.2%}",
                run["bytes_received_per_round"][0],
                round(byte_ratio, 2),
                "-" if dtype == "float32" else met,
            ]
        )
    table = markdown_table(
        [
            "transport",
            "final eval loss",
            "vs float32",
            "bytes clients sent per round",
            "fewer bytes than float32",
            f"within {TARGET_RELATIVE_LOSS:.0%}",
        ],
        rows,
    )
    table += f"\nSizes (bench/learning_parity.py): {asdict(sizes)}\n"
    recorder.write(
        {
            "sizes": asdict(sizes),
            "runs": runs,
            "target": {"relative_eval_loss_max": TARGET_RELATIVE_LOSS, "by_dtype": verdicts},
        },
        table,
        out_dir=args.out_dir,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
