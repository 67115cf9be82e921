"""``python -m bench.instructions``: user-space instructions per child, by callgrind.

Wall-clock figures on a shared machine move by tens of percent between runs;
callgrind counts the instructions the same work executes, so two versions of
one path compare reliably (issue 11).  Each path runs twice under
``valgrind --tool=callgrind``, with ``small`` and ``large`` children, and the
difference divided by ``large - small`` is the cost of one child: start-up,
imports and the monitor's creation cancel out.  All threads are counted (the
monitor thread's reap pass is part of a child's cost); the kernel is not.

The counts still move by a few percent from run to run, because whether a
child is already dead at the first look races its exit; take the median of a
few runs (``--runs``).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile

PATHS = {
    "spawn+wait": "mon.spawn(['/bin/true']).wait()",
    "spawn+future": "mon.spawn(['/bin/true']).future.result()",
    "syncmon.Popen": "syncmon.Popen(['/bin/true']).wait()",
    "subprocess.Popen": "subprocess.Popen(['/bin/true']).wait()",
}

_PROGRAM = """
import subprocess, sys
import syncmon
mon = syncmon.Monitor()
for _ in range(int(sys.argv[1])):
    {statement}
mon.close()
"""


def count(statement: str, children: int) -> int:
    """Instructions callgrind collected for a run with ``children`` children."""
    with tempfile.TemporaryDirectory() as scratch:
        out = os.path.join(scratch, "callgrind.out")
        run = subprocess.run(
            ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
             sys.executable, "-c", _PROGRAM.format(statement=statement), str(children)],
            capture_output=True, text=True, check=True,
        )
    found = re.search(r"Collected : (\d+)", run.stderr)
    if found is None:
        raise RuntimeError(f"no instruction count in callgrind's output:\n{run.stderr[-2000:]}")
    return int(found.group(1))


def per_child(statement: str, small: int, large: int) -> float:
    return (count(statement, large) - count(statement, small)) / (large - small)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.instructions", description=__doc__.splitlines()[0])
    parser.add_argument("--paths", default=",".join(PATHS), help=f"comma separated, of: {', '.join(PATHS)}")
    parser.add_argument("--runs", type=int, default=1, help="runs per path; the median is printed")
    parser.add_argument("--small", type=int, default=20)
    parser.add_argument("--large", type=int, default=220)
    args = parser.parse_args(argv)
    if shutil.which("valgrind") is None:
        print("valgrind is not installed", file=sys.stderr)
        return 1
    for name in args.paths.split(","):
        counts = [per_child(PATHS[name], args.small, args.large) for _ in range(args.runs)]
        print(f"{name:18} {statistics.median(counts):>10,.0f} instructions per child  "
              f"(runs: {', '.join(f'{c:,.0f}' for c in counts)})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
