"""Run one trial in this (fresh) process: ``python -m bench.worker '<json spec>'``.

One process per trial because the contenders would otherwise contaminate each
other: a monitor thread or a child watcher left from an earlier trial would wake on
every later SIGCHLD, ru_maxrss is a high-water mark that never comes down, and
threads or fds left behind would be billed to whoever runs next.

Prints one JSON object on stdout: the workload's result, or {"error": ...}.
"""

from __future__ import annotations

import errno
import json
import os
import resource
import signal
import sys
import time
import traceback
from typing import Any

from bench.contenders import CONTENDERS, Contender
from bench.workloads import WORKLOADS, devnull_stdio, resolve


def _raise_fd_limit(children: int) -> None:
    """Let a trial hold a few fds per live child (pidfds, a blocked waiter's fd).

    The soft limit goes up to the hard one.  A burst of 10,000 children waited
    in threads holds two fds per child under syncmon (its pidfd and one per
    blocked wait()), past a hard limit of 20,000: then, and only when root
    (CAP_SYS_RESOURCE), the hard limit of this process (and of the children it
    spawns, which inherit it) goes up too.  Nothing machine-wide changes.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = 3 * children + 1024
    if hard != resource.RLIM_INFINITY and hard < needed:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (needed, needed))
            return
        except (ValueError, OSError):
            pass  # not privileged: the trial meets EMFILE and reports it as its failure
    if hard == resource.RLIM_INFINITY or soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _warm_up(contender: Contender) -> None:
    # First use pays for lazy imports and cold code paths in every contender alike;
    # none of that is what the trial measures.
    with devnull_stdio() as stdio:
        contender.stream([resolve("true")], 4, 2, stdio)


def _failure(exc: BaseException) -> dict[str, str]:
    error = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, OSError) and exc.errno == errno.EMFILE:
        # Say which limit bound: the usual cause is a hard limit this process
        # could not raise (no CAP_SYS_RESOURCE), not a leak.
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        error += f" (RLIMIT_NOFILE soft/hard {soft}/{hard})"
    return {"error": error, "traceback": traceback.format_exc()}


def run_trial(spec: dict[str, Any]) -> dict[str, Any]:
    contender = CONTENDERS[spec["contender"]]()
    workload = WORKLOADS[spec["workload"]]
    try:
        # A contender whose machinery cannot start here (a fork server without
        # clone3, a monitor at EMFILE) is a failed trial, reported like any other.
        contender.open()
    except Exception as exc:  # noqa: BLE001
        return _failure(exc)
    try:
        _warm_up(contender)
        result = workload(contender, **spec["params"])
    except Exception as exc:  # noqa: BLE001 - reported to the parent, which goes on
        result = _failure(exc)
    try:
        contender.close()
    except Exception as exc:  # noqa: BLE001
        # The figures were complete before close(): keep them, and report the
        # failure beside them (it is a bug in the contender, not a bad sample).
        result["teardown_error"] = _failure(exc)
    return result


def main(argv: list[str]) -> int:
    spec = json.loads(argv[1])
    _raise_fd_limit(int(spec["params"].get("n", 0)))
    started = time.monotonic()
    result = run_trial(spec)
    result["worker_s"] = time.monotonic() - started
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()
    if "error" in result and os.getpgid(0) == os.getpid():
        # A failed trial may leave children blocked on a pipe or asleep.  We lead our
        # own process group (the scheduler starts us in a new session) and are still
        # alive, so the group id is ours: take the group, and ourselves, down.
        os.killpg(0, signal.SIGKILL)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
