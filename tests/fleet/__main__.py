"""``python -m tests.fleet --profile short|full``: one fleet run, the report on stdout and as JSON
in the work folder; exit code 0 when every site's points are in InfluxDB exactly once."""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

from tests.fleet.run import PROFILES, run_fleet


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.fleet", description=__doc__)
    parser.add_argument("--profile", choices=sorted(PROFILES), default="short")
    parser.add_argument("--workdir", type=Path, help="keep servers' data and logs here "
                        "(default: a temporary folder, removed after a passing run)")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _exit_cleanly)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="ha-ingestor-fleet-"))
    workdir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()

    def log(message: str) -> None:
        print(f"[{time.monotonic() - started:7.1f}s] {message}", flush=True)

    report = run_fleet(workdir, args.profile, log)
    print(render(report.as_dict()), flush=True)
    if report.passed and not args.workdir:
        shutil.rmtree(workdir, ignore_errors=True)
    else:
        print(f"servers' data and logs kept in {workdir}")
    return 0 if report.passed else 1


def render(report: dict) -> str:
    lines = [f"fleet run ({report['profile']}), {report['seconds']:.0f} s: "
             f"{'PASSED' if report['passed'] else 'FAILED'}", "", "faults:"]
    lines += [f"  {f['fault']} ({f['seconds']:.0f} s): {f.get('note', '')}"
              for f in report["faults"]]
    lines += ["", f"{'site':<16} {'fed':>8} {'InfluxDB':>9} {'lost':>6} {'extra':>6}"]
    total = {"fed": 0, "in_influxdb": 0, "lost": 0, "extra": 0}
    for name, row in report["sites"].items():
        lines.append(f"{name:<16} {row['fed']:>8} {row['in_influxdb']:>9} {row['lost']:>6} "
                     f"{row['extra']:>6}")
        for key in total:
            total[key] += row[key]
    lines.append(f"{'total':<16} {total['fed']:>8} {total['in_influxdb']:>9} "
                 f"{total['lost']:>6} {total['extra']:>6}")
    lines += ["", f"re-sent messages JetStream dropped as duplicates: "
                  f"{report['duplicates_dropped']}",
              f"messages JetStream delivered again (a writer died, an outage): "
              f"{report['redelivered']}"]
    return "\n".join(lines) + "\n" + json.dumps({"passed": report["passed"]})


def _exit_cleanly(signum, _frame) -> None:
    raise SystemExit(128 + signum)


if __name__ == "__main__":
    sys.exit(main())
