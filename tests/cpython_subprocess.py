"""Run CPython's own Lib/test/test_subprocess.py, optionally with syncmon.Popen swapped in.

    python tests/cpython_subprocess.py syncmon   # subprocess.Popen is syncmon.Popen
    python tests/cpython_subprocess.py plain     # the baseline

Prints one JSON object: tests run, skipped, and the ids that failed or errored.
test_subprocess is the specification of "drop-in": every test that passes with
plain subprocess must pass with syncmon.Popen.  The swap happens before the test
module is imported, so its own Popen subclasses derive from syncmon.Popen too,
and subprocess.run/call/check_output (which look Popen up at call time) use it.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import unittest


def main(mode: str) -> None:
    if mode == "syncmon":
        import syncmon

        subprocess.Popen = syncmon.Popen  # type: ignore[misc]
    elif mode != "plain":
        raise SystemExit(f"usage: {sys.argv[0]} syncmon|plain")
    from test import test_subprocess

    suite = unittest.defaultTestLoader.loadTestsFromModule(test_subprocess)
    result = unittest.TextTestRunner(stream=io.StringIO(), verbosity=0).run(suite)
    failed = sorted({test.id() for test, _ in result.failures + result.errors})
    print(json.dumps({"mode": mode, "run": result.testsRun, "skipped": len(result.skipped), "failed": failed}))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "syncmon")
