"""``python -m tests.chaos --profile short|full --seed N``: one chaos run, report on stdout, JSON
report in the work folder; exit code 0 when our pipeline lost and duplicated nothing."""

from __future__ import annotations

import argparse
import faulthandler
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

from tests.chaos import faults
from tests.chaos.report import render
from tests.chaos.run import run_chaos


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.chaos", description=__doc__)
    parser.add_argument("--profile", choices=sorted(faults.PROFILES), default="short")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--workdir", type=Path, help="keep servers' data and logs here "
                        "(default: a temporary folder, removed after a passing run)")
    parser.add_argument("--json", type=Path, help="also write the report as JSON to this file")
    parser.add_argument("--no-pipeline", action="store_true", help="servers, load, ledger and "
                        "HA's own influxdb integration only (checks the harness itself)")
    args = parser.parse_args(argv)
    faulthandler.register(signal.SIGUSR1, all_threads=True)   # kill -USR1: where is it stuck?
    signal.signal(signal.SIGTERM, _exit_cleanly)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="ha-ingestor-chaos-"))
    workdir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()

    def log(message: str) -> None:
        print(f"[{time.monotonic() - started:7.1f}s] {message}", flush=True)

    report = run_chaos(workdir, args.profile, args.seed, with_pipeline=not args.no_pipeline,
                       log=log)
    print(render(report), flush=True)
    if args.json:
        args.json.write_text((workdir / "report.json").read_text())
    if report.passed and not args.workdir:
        shutil.rmtree(workdir, ignore_errors=True)
    else:
        print(f"servers' data and logs kept in {workdir}")
    return 0 if report.passed else 1


def _exit_cleanly(signum, _frame) -> None:
    """SIGTERM (a CI timeout): unwind, so the servers this run started are stopped."""
    raise SystemExit(128 + signum)


if __name__ == "__main__":
    sys.exit(main())
