"""A tree member that runs a tree of its own (tests/test_trees.py::test_tree_inside_a_tree).

Prints "<mechanism> <inner root pid> <inner pids...>" once its inner tree has
its three members, then sleeps until the outer tree kills it (inner tree and
all: it never cleans up itself, which is the point).
"""

import time

import syncmon

with syncmon.Monitor() as mon:
    h = mon.spawn(["sh", "-c", "sleep 100 & sleep 100 & wait"], tree=True)
    deadline = time.monotonic() + 30
    while len(h.tree.pids()) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    others = [pid for pid in h.tree.pids() if pid != h.pid]
    print(h.tree.mechanism, h.pid, *others, flush=True)
    time.sleep(100)
