"""What the driver shows: a live progress line, the final table, the JSON document, the verdict."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, TextIO

from stress.config import EXPECTED_TO_FAIL, RESERVED_PIDS, Config
from stress.driver import Environment, SubjectRun
from stress.scenarios import SCENARIOS

COLUMNS = (
    ("children", "children"),
    ("pid_reuses", "reuses"),
    ("misattributed", "misattr"),
    ("wrong_signals", "wrong-sig"),
    ("hung_waits", "hung"),
    ("zombies", "zombies"),
    ("children_left", "left"),
    ("fds_left", "fds"),
    ("exceptions", "exc"),
    ("eagain", "eagain"),
    ("sigchld_blocked", "chld-blk"),
    ("seconds", "secs"),
)
NOTES_PER_SCENARIO = 3


class ProgressLine:
    """One line rewritten in place while the workers run (only on a terminal)."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def __call__(self, subject: str, message: dict[str, object]) -> None:
        self._stream.write(
            f"\r\x1b[K{subject:<16} {message['scenario']:<19} {message['elapsed']:>5}s"
            f"  children {message['children']:>6}  reuses {message['pid_reuses']:>6}"
            f"  errors {message['errors']}"
        )
        self._stream.flush()

    def clear(self) -> None:
        self._stream.write("\r\x1b[K")
        self._stream.flush()


def errors(run: SubjectRun) -> int:
    """The subject's error count; a worker that did not finish cleanly is one more."""
    counted: int = sum(tally["errors"] for tally in run.scenarios.values())
    return counted + (not run.finished or run.returncode != 0 or run.timed_out)


def failed(environment: Environment, runs: list[SubjectRun]) -> list[str]:
    """Why the run fails, if it does: an error in a subject other than the contrast,
    or a host pid_max that the namespace did not keep to itself."""
    reasons = [
        f"{run.subject}: {errors(run)} errors"
        for run in runs
        if run.subject not in EXPECTED_TO_FAIL and errors(run)
    ]
    reasons += [
        f"{run.subject}/{scenario}: resource use grew ({_grown(tally['resources'])})"
        for run in runs
        for scenario, tally in run.scenarios.items()
        if (tally.get("resources") or {}).get("flat") is False
    ]
    if environment.host_pid_max_after != environment.host_pid_max_before:
        reasons.append(
            f"host pid_max changed: {environment.host_pid_max_before} -> {environment.host_pid_max_after}"
        )
    return reasons


def document(config: Config, environment: Environment, runs: list[SubjectRun]) -> dict[str, object]:
    """Everything, for ``--json``."""
    return {
        "ok": not failed(environment, runs),
        "failures": failed(environment, runs),
        "environment": dataclasses.asdict(environment),
        "config": dataclasses.asdict(config),
        "subjects": {
            run.subject: {
                **dataclasses.asdict(run),
                "errors": errors(run),
                "gates_exit_status": run.subject not in EXPECTED_TO_FAIL,
            }
            for run in runs
        },
    }


def table(config: Config, environment: Environment, runs: list[SubjectRun]) -> str:
    lines = [_headline(environment, runs), ""]
    lines.append(f"{'scenario':<19} {'subject':<16}" + "".join(f"{title:>10}" for _, title in COLUMNS))
    for scenario in config.scenarios:
        for i, run in enumerate(runs):
            label = scenario if i == 0 else ""
            lines.append(f"{label:<19} {run.subject:<16}" + _cells(run.scenarios.get(scenario)))
    lines.append("")
    lines += [f"  {name:<19} {SCENARIOS[name].summary}" for name in config.scenarios]
    lines.append("")
    lines += _resources(runs)
    lines += _trees(runs)
    lines += _pools(runs)
    lines += _verdicts(environment, runs)
    lines += _notes(config, runs)
    return "\n".join(lines)


def _headline(environment: Environment, runs: list[SubjectRun]) -> str:
    host = f"host pid_max {environment.host_pid_max_before} before, {environment.host_pid_max_after} after"
    if not environment.namespace:
        return f"NO pid namespace ({environment.why_not}): pids did not wrap; {host}"
    inside = next((run.namespace for run in runs if run.namespace), None) or {}
    pids = ", ".join(f"{run.subject} {run.worker_pid}" for run in runs)
    return (
        f"pid namespace with pid_max {inside.get('pid_max')}: pids recycled from "
        f"[{RESERVED_PIDS}, {inside.get('pid_max')}); worker pids inside: {pids}; {host}"
    )


def _cells(tally: dict[str, Any] | None) -> str:
    if tally is None:
        return f"{'(not run)':>10}"
    if tally.get("skipped"):
        return f"  skipped: {tally['skipped']}"
    return "".join(f"{tally.get(key)!s:>10}" for key, _ in COLUMNS)


def _verdicts(environment: Environment, runs: list[SubjectRun]) -> list[str]:
    lines = []
    for run in runs:
        how = "finished" if run.finished else "DID NOT FINISH" + (" (timed out)" if run.timed_out else "")
        expectation = " (expected: it reaps with waitid(P_ALL))" if run.subject in EXPECTED_TO_FAIL else ""
        lines.append(f"{run.subject}: {errors(run)} errors{expectation}; worker {how}, exit {run.returncode}")
        if not run.finished and run.stderr:
            lines += ["    " + line for line in run.stderr.strip().splitlines()[-15:]]
    reasons = failed(environment, runs)
    lines.append("FAIL: " + "; ".join(reasons) if reasons else "OK: no syncmon errors")
    return lines


def _notes(config: Config, runs: list[SubjectRun]) -> list[str]:
    lines = []
    for run in runs:
        for scenario in config.scenarios:
            tally = run.scenarios.get(scenario) or {}
            for note in tally.get("notes", [])[:NOTES_PER_SCENARIO]:
                lines.append(f"  {run.subject}/{scenario}: {note}")
    return ["", "first errors seen:", *lines] if lines else []


def _grown(resources: dict[str, Any]) -> str:
    return ", ".join(name for name, m in resources["measures"].items() if not m["flat"])


def _per_scenario(runs: list[SubjectRun], key: str, describe: Callable[[dict[str, Any]], str]) -> list[str]:
    """One line per subject and scenario whose tally has ``key``, then a blank line."""
    lines = [
        f"{run.subject}/{scenario}{describe(tally)}"
        for run in runs
        for scenario, tally in run.scenarios.items()
        if tally.get(key)
    ]
    return [*lines, ""] if lines else []


def _trees(runs: list[SubjectRun]) -> list[str]:
    """Scenario ``trees``: how many trees, members and bystanders, and what the members' pids became."""
    return _per_scenario(runs, "trees", lambda tally: (
        f" ({tally['tree_mechanism']}): {tally['trees']} trees, {tally['members']} members,"
        f" {tally['bystanders']} bystanders ({tally['bystander_reuses']} born on a pid a tree process had),"
        f" members left alive {tally['members_left']}, signals to bystanders {tally['wrong_signals']}"))


def _pools(runs: list[SubjectRun]) -> list[str]:
    """Scenario ``pool``: tasks, deaths, kills, and what went wrong with them."""
    return _per_scenario(runs, "tasks", lambda tally: (
        f": {tally['tasks']} tasks, {tally['task_deaths']} failed with WorkerDied"
        f" naming their worker and its true cause ({tally['unledgered_deaths']} killed before their first"
        f" line: pid checked only), {tally['kills']} workers SIGKILLed, {tally['children']} workers"
        f" ({tally['pid_reuses']} on a reused pid); misattributed {tally['misattributed']}, wrong results"
        f" {tally['wrong_results']}, stray failures {tally['stray_failures']}, hung {tally['hung_waits']}"))


def _resources(runs: list[SubjectRun]) -> list[str]:
    """The soak's samples: first decile against last, per measure."""
    lines = []
    for run in runs:
        for scenario, tally in run.scenarios.items():
            resources = tally.get("resources")
            if not resources:
                continue
            rate = tally["children"] / tally["seconds"] if tally["seconds"] else 0.0
            lines.append(
                f"{run.subject}/{scenario}: {tally['children']} children in {tally['seconds']} s "
                f"({rate:.0f}/s), {tally['pid_reuses']} pid reuses; {resources['samples']} samples"
            )
            for name, m in (resources.get("measures") or {}).items():
                lines.append(
                    f"  {name:<8} first decile mean {m['first_decile_mean']:>9} max {m['first_decile_max']:>7}"
                    f"   last decile mean {m['last_decile_mean']:>9} max {m['last_decile_max']:>7}"
                    f"   (allowed max {m['allowed_max']}) {'flat' if m['flat'] else 'GREW'}"
                )
            lines.append("")
    return lines
