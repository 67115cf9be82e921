"""``python -m stress``: run the scenarios against syncmon and the contrast; print what went wrong.

Exit status: 0 when no subject other than the contrast had an error and the
host's pid_max is unchanged, 1 otherwise, 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Callable, Collection

from stress import driver, report
from stress.config import RESERVED_PIDS, SUBJECTS, Config, famine_pid_max
from stress.scenarios import DEFAULT_SCENARIOS, SCENARIOS

SOAK_CHILDREN = 1_000_000
SOAK_PID_MAX = RESERVED_PIDS + 724
"""1024: enough free pids that spawners rarely meet EAGAIN (the soak measures a long
run, not pid famine), few enough that every pid comes back over a thousand times."""


def preset(short: bool, threads: int, soak: bool = False) -> Config:
    """The defaults: ``--short`` fits the whole run (both subjects) in about a minute;
    ``--soak`` is one scenario, bounded by its children (a million), not by time."""
    if soak:
        return Config(
            seconds=24 * 3600.0,
            max_children=SOAK_CHILDREN,
            threads=threads,
            wait_bound=10.0,
            pid_max=SOAK_PID_MAX,
            seed=0x50A4,
            scenarios=("soak",),
            subjects=("syncmon",),
        )
    return Config(
        seconds=2.5 if short else 10.0,
        max_children=3_000 if short else 50_000,
        threads=threads,
        wait_bound=5.0 if short else 10.0,
        pid_max=famine_pid_max(threads),
        seed=0x5EED,
        scenarios=DEFAULT_SCENARIOS,
        subjects=("syncmon", "contrast") if short else SUBJECTS,
    )


def parse(argv: list[str] | None) -> tuple[Config, argparse.Namespace]:
    parser = argparse.ArgumentParser(
        prog="python -m stress", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--short", action="store_true", help="the CI run: syncmon and contrast, about a minute in all"
    )
    parser.add_argument(
        "--soak",
        action="store_true",
        help=f"the soak: {SOAK_CHILDREN:,} children (or --children) against syncmon, resources sampled",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON document instead of the table")
    parser.add_argument("--seconds", type=float, help="budget of each scenario, per subject")
    parser.add_argument("--children", type=int, help="children budget of each scenario, per subject")
    parser.add_argument("--threads", type=int, default=6, help="threads per scenario (default 6)")
    parser.add_argument(
        "--pid-max", type=int, help="pid_max in the namespace (default 302 + threads; at least 301)"
    )
    parser.add_argument("--wait-bound", type=float, help="seconds after which a wait counts as hung")
    parser.add_argument("--seed", type=int)
    parser.add_argument(
        "--scenarios", type=_names(SCENARIOS), help=f"comma-separated, of: {','.join(SCENARIOS)}"
    )
    parser.add_argument(
        "--subjects", type=_names(SUBJECTS), help=f"comma-separated, of: {','.join(SUBJECTS)}"
    )
    parser.add_argument(
        "--no-namespace", action="store_true", help="run without a pid namespace (pids will not wrap)"
    )
    args = parser.parse_args(argv)
    if args.soak and args.short:
        parser.error("--soak and --short are different runs: choose one")
    if args.threads < 2:
        parser.error("--threads must be at least 2: races need a second thread")
    if args.pid_max is not None and args.pid_max <= RESERVED_PIDS:
        parser.error(f"--pid-max must be at least {RESERVED_PIDS + 1}: the kernel refuses less")
    overrides = {
        "seconds": args.seconds,
        "max_children": args.children,
        "wait_bound": args.wait_bound,
        "pid_max": args.pid_max,
        "seed": args.seed,
        "scenarios": args.scenarios,
        "subjects": args.subjects,
    }
    config = dataclasses.replace(
        preset(args.short, args.threads, args.soak),
        **{key: value for key, value in overrides.items() if value is not None},
    )
    return config, args


def _names(known: Collection[str]) -> Callable[[str], tuple[str, ...]]:
    """An argparse type: a comma-separated selection from ``known``."""

    def names(text: str) -> tuple[str, ...]:
        chosen = tuple(name.strip() for name in text.split(",") if name.strip())
        unknown = [name for name in chosen if name not in known]
        if unknown or not chosen:
            raise argparse.ArgumentTypeError(f"unknown or empty: {unknown or text!r}")
        return chosen

    return names


def main(argv: list[str] | None = None) -> int:
    config, args = parse(argv)
    live = not args.json and sys.stdout.isatty()
    progress = report.ProgressLine(sys.stdout)
    environment, runs = driver.run_all(config, progress if live else _quiet, not args.no_namespace)
    if live:
        progress.clear()
    if args.json:
        print(json.dumps(report.document(config, environment, runs), indent=2))
    else:
        print(report.table(config, environment, runs))
    return 1 if report.failed(environment, runs) else 0


def _quiet(subject: str, message: dict[str, object]) -> None:
    """Progress goes nowhere when stdout is not a terminal (a log, a pipe, --json)."""


if __name__ == "__main__":
    sys.exit(main())
