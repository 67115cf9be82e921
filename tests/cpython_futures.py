"""Run CPython's own test_concurrent_futures ProcessPool tests, optionally against syncmon's pool.

    python tests/cpython_futures.py syncmon   # concurrent.futures.ProcessPoolExecutor is syncmon's
    python tests/cpython_futures.py plain     # the baseline

Prints one JSON object: tests run, skipped, and the ids that failed or errored.
The swap happens before the test module is imported, so its mixins (which
name ``futures.ProcessPoolExecutor`` when their classes are made) use ours.

Which tests: the ProcessPool classes of the forkserver variant only (syncmon
ignores ``mp_context``, so the fork and spawn variants run the same code),
without ``ExecutorDeadlockTest``, whose every test is about the stdlib's
break-everything semantics (``BrokenProcessPool`` for all tasks).  The module:
the running interpreter's ``test.test_concurrent_futures`` if it ships one;
else the file of another installed CPython (this machine's 3.11.7 ships
without it; 3.10.13's file runs on 3.11's ``test.support``).
"""

from __future__ import annotations

import concurrent.futures
import glob
import importlib.util
import io
import json
import os
import shutil
import signal
import sys
import tempfile
import threading
import types
import unittest

FALLBACK = "/root/.pyenv/versions/3.10.*/lib/python3.10/test/test_concurrent_futures.py"


def load_suite_module() -> types.ModuleType:
    if importlib.util.find_spec("test.test_concurrent_futures") is not None:
        return importlib.import_module("test.test_concurrent_futures")
    paths = sorted(glob.glob(FALLBACK))
    if not paths:
        raise SystemExit("no test_concurrent_futures found")
    # Importable by name, in the workers too (they get our sys.path): the
    # tests' functions travel by reference.
    here = tempfile.mkdtemp(prefix="cpython-futures-")
    target = os.path.join(here, "cpython_test_concurrent_futures.py")
    shutil.copy(paths[-1], target)
    sys.path.insert(0, here)
    spec = importlib.util.spec_from_file_location("cpython_test_concurrent_futures", target)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def selected(test: unittest.TestCase) -> bool:
    name = type(test).__name__
    return "ProcessPoolForkserver" in name and "Deadlock" not in name


def flatten(suite: unittest.TestSuite) -> list[unittest.TestCase]:
    out: list[unittest.TestCase] = []
    for item in suite:
        out.extend(flatten(item) if isinstance(item, unittest.TestSuite) else [item])  # type: ignore[arg-type]
    return out


def main(mode: str) -> None:
    if mode == "syncmon":
        import syncmon

        # The monitor starts in a thread of its own, so that SIGCHLD stays
        # unblocked in this one.  The tests start children with other tools
        # from here (multiprocessing's fork server for their Manager,
        # Semaphore and Queue; subprocess for their interpreter-exit
        # scripts), and those would inherit syncmon's block (README,
        # "Children started with other tools"): that fork server then never
        # reaps its children, and a Manager's shutdown waits for its dead
        # process forever.  That is what hung this runner after ~17 tests.
        # The mask must also be unblocked to begin with: this runner is started
        # from pytest, whose main thread a syncmon Monitor of an earlier test
        # left with SIGCHLD blocked, and exec keeps the mask (what hung this
        # runner after tests/test_process_pool.py in the same pytest run).
        signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGCHLD])
        starter = threading.Thread(target=syncmon.default_monitor)
        starter.start()
        starter.join()
        # Each test's tearDown (threading_cleanup) retries until the thread
        # count is back to where it was; syncmon's idle callback threads
        # would linger 5 s, and every test would wait out that check.
        syncmon.futures.CALLBACK_IDLE_SECONDS = 0.1

        concurrent.futures.ProcessPoolExecutor = syncmon.ProcessPoolExecutor  # type: ignore[misc]
    elif mode != "plain":
        raise SystemExit(f"usage: {sys.argv[0]} syncmon|plain")
    module = load_suite_module()
    tests = [t for t in flatten(unittest.defaultTestLoader.loadTestsFromModule(module)) if selected(t)]
    if hasattr(module, "setUpModule"):
        module.setUpModule()
    result = unittest.TextTestRunner(stream=io.StringIO(), verbosity=0).run(unittest.TestSuite(tests))
    failed = sorted({test.id() for test, _ in result.failures + result.errors})
    # On a line of its own: the tests print their durations without a newline.
    print()
    print(json.dumps({"mode": mode, "run": result.testsRun, "skipped": len(result.skipped), "failed": failed}))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "syncmon")
