"""``python -m bench``: compare syncmon with the other ways to wait for children.

Judges the targets of issue 11 in one run.  The default run (about 3 min on 2
cores, well under 25) covers every target but the 10,000-children burst;
``--many`` is that burst, a separate run (about 5 min here, longer under load).
The full issue-11 measurement is both.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from bench.contenders import CONTENDERS, DEFAULT, PidfdEpoll, available
from bench.report import Report, load, machine_facts
from bench.schedule import Config, Trial, plan, run
from bench.workloads import WORKLOADS

Measured = tuple[Report, dict[str, Any], str]  # report, machine facts, command line

QUICK: dict[str, Any] = {
    "latency_rounds": 3,
    "kills": 10,
    "throughput_rounds": 2,
    "children": 100,
    "sequential_rounds": 2,
    "sequential_children": 50,
    "burst_rounds": 1,
    "burst_sizes": (100, 400),
    "idle_rounds": 1,
    "idle_children": 20,
}

# ``--many``: issue 11's "10,000 live children all exiting at once", for the
# contenders that wait for that many on this machine without hours of GIL
# contention (one thread per child for syncmon.wait is the point being measured).
MANY: dict[str, Any] = {
    "contenders": ["syncmon.future", PidfdEpoll.name, "asyncio+pidfd", "syncmon.wait"],
    "workloads": ["burst"],
    "burst_sizes": (1000, 10000),
    "burst_rounds": 3,
    # Spawning 10,000 children alone takes ~10-30 s here, more under load.
    "trial_timeout_s": 900.0,
}


def _sizes(text: str) -> tuple[int, ...]:
    sizes = tuple(sorted(int(x) for x in text.split(",")))
    if not sizes or sizes[0] <= 0:
        raise argparse.ArgumentTypeError("positive integers, comma separated")
    return sizes


def _names(known: list[str]) -> Callable[[str], list[str]]:
    def parse(text: str) -> list[str]:
        names = [x.strip() for x in text.split(",") if x.strip()]
        unknown = [n for n in names if n not in known]
        if unknown:
            raise argparse.ArgumentTypeError(f"unknown: {', '.join(unknown)}; known: {', '.join(known)}")
        return names

    return parse


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    p.add_argument("--quick", action="store_true", help="few rounds, small sizes: a smoke run (~1 min)")
    p.add_argument(
        "--many",
        action="store_true",
        help="issue 11's many-children run: burst only, n=1000,10000, 3 rounds, for "
        + ", ".join(MANY["contenders"])
        + " (each overridable by its own option; ~5 min here, longer under load)",
    )
    p.add_argument("--rounds", type=int, help="rounds for every workload (default: per workload)")
    p.add_argument(
        "--kills", type=int, help="latency: children waited on at once and killed one by one, per trial (default 20)"
    )
    p.add_argument("--children", type=int, help="children per throughput trial (default 300)")
    p.add_argument("--in-flight", type=int, help="throughput: children alive at once (default 16)")
    p.add_argument(
        "--sequential-children",
        type=int,
        help="sequential: children spawned and waited for one at a time, per trial (default 300)",
    )
    p.add_argument(
        "--burst-sizes",
        type=_sizes,
        help="live children for the burst, e.g. 1000,10000 (default 250,1000); the contenders with a "
        "thread per child that issue 11 does not judge there (Popen.*, asyncio, syncmon.Popen) are left "
        "out above 2000 (--list)",
    )
    p.add_argument("--idle-children", type=int, help="children sleeping in the idle-CPU trial (default 50)")
    p.add_argument("--contenders", type=_names(list(CONTENDERS)), help="comma separated subset (see --list)")
    p.add_argument("--workloads", type=_names(list(WORKLOADS)), help="comma separated subset of " + ",".join(WORKLOADS))
    p.add_argument("--trial-timeout", type=float, help="seconds before a trial is killed (default 180)")
    p.add_argument("--seed", type=int, help="seed of the latency kill gaps (default 1)")
    p.add_argument("--json", metavar="PATH", help="also write every figure and raw sample as JSON ('-': stdout)")
    p.add_argument(
        "--plot",
        metavar="PATH",
        type=Path,
        default=Path(__file__).resolve().parent / "latency.png",
        help="latency ECDF, if matplotlib is importable (default: bench/latency.png)",
    )
    p.add_argument("--no-plot", action="store_true")
    p.add_argument("--list", action="store_true", help="list the contenders and whether they can run here")
    p.add_argument("--dry-run", action="store_true", help="print the trial plan and exit")
    p.add_argument("--report", metavar="JSON", help="re-render the report of an earlier --json run, run nothing")
    return p


def wanted(args: argparse.Namespace) -> list[str]:
    """The contenders asked for, runnable or not."""
    return list(args.contenders or (MANY["contenders"] if args.many else DEFAULT))


def build_config(args: argparse.Namespace, runnable: list[str]) -> Config:
    contenders = [n for n in wanted(args) if n in runnable]
    config = Config(contenders=contenders, workloads=list(WORKLOADS))
    if args.quick:
        config = replace(config, **QUICK)
    if args.many:
        config = replace(config, **{k: v for k, v in MANY.items() if k != "contenders"})
    overrides: dict[str, Any] = {
        "workloads": args.workloads,
        "kills": args.kills,
        "children": args.children,
        "in_flight": args.in_flight,
        "sequential_children": args.sequential_children,
        "burst_sizes": args.burst_sizes,
        "idle_children": args.idle_children,
        "trial_timeout_s": args.trial_timeout,
        "seed": args.seed,
    }
    if args.rounds is not None:
        rounds = ("latency_rounds", "throughput_rounds", "sequential_rounds", "burst_rounds", "idle_rounds")
        overrides |= dict.fromkeys(rounds, args.rounds)
    return replace(config, **{k: v for k, v in overrides.items() if v is not None})


def progress(done: int, total: int, trial: Trial, result: dict[str, Any], seconds: float) -> None:
    status = "ok" if "error" not in result else f"FAILED: {result['error']}"
    print(
        f"[{done:>3}/{total}] r{trial.round} {trial.group:<12} {trial.contender:<18} {seconds:5.2f} s {status}",
        file=sys.stderr,
        flush=True,
    )


def list_contenders(runnable: list[str], skipped: dict[str, str]) -> None:
    for name, cls in CONTENDERS.items():
        status = "ok" if name in runnable else f"SKIP ({skipped[name]})"
        extra = "" if name in DEFAULT else "  (not run by default)"
        only = ",".join(w for w in WORKLOADS if w in cls.workloads)
        limit = f", burst n ≤ {cls.max_burst}" if cls.max_burst is not None else ""
        print(f"{name:<18} {status:<6} {cls.how}{extra}\n{'':<25} workloads: {only}{limit}")


def measure(args: argparse.Namespace, argv: list[str], config: Config, skipped: dict[str, str]) -> Measured:
    command = "python -m bench" + "".join(" " + shlex.quote(a) for a in argv)
    facts = machine_facts()
    outcomes = run(config, progress)
    facts["loadavg_end"] = os.getloadavg()
    asked = wanted(args)
    return Report(config, outcomes, {n: why for n, why in skipped.items() if n in asked}), facts, command


def emit(args: argparse.Namespace, report: Report, facts: dict[str, Any], command: str) -> None:
    data = report.as_json(facts, command)
    if args.json == "-":
        json.dump(data, sys.stdout, indent=1)
        print()
    else:
        print(report.markdown(facts, command))
        if args.json:
            Path(args.json).write_text(json.dumps(data, indent=1) + "\n")
            print(f"JSON written to {args.json}", file=sys.stderr)
    if args.no_plot or "latency" not in report.config.workloads:
        return
    if report.plot(args.plot):
        print(f"latency plot written to {args.plot}", file=sys.stderr)
    else:
        print("matplotlib not importable: no plot", file=sys.stderr)


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    runnable, skipped = available()
    if args.list:
        list_contenders(runnable, skipped)
        return 0
    if args.report:
        report, facts, command = load(json.loads(Path(args.report).read_text()))
    else:
        config = build_config(args, runnable)
        if args.dry_run:
            for trial in plan(config):
                print(trial.round, trial.group, trial.contender, json.dumps(trial.params))
            return 0
        if not config.contenders:
            print("no contender can run here", file=sys.stderr)
            return 1
        report, facts, command = measure(args, argv, config, skipped)
    emit(args, report, facts, command)
    return 0 if not report.failures() else 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
