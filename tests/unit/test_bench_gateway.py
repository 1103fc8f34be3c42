"""The gateway benchmarks' process accounting: a gateway's child processes count as its own."""

from __future__ import annotations

import subprocess
import sys

from bench.gateway import cpu_s, process_tree, rss_mb, timer_floor
from tests.support import wait_until

# a child that starts a grandchild, burns a little CPU, then waits (both exit with stdin)
_PARENT = """
import subprocess, sys
kid = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=sys.stdin)
print(kid.pid, flush=True)
sum(i * i for i in range(2_000_000))
sys.stdin.read()
kid.wait()
"""


def test_process_tree_cpu_and_rss_include_descendants() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", _PARENT], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        grandchild = int(proc.stdout.readline())
        wait_until(lambda: grandchild in process_tree(proc.pid), 10, "grandchild in the tree")
        tree = process_tree(proc.pid)
        assert tree[0] == proc.pid and grandchild in tree and len(tree) == 2
        assert rss_mb(proc.pid) > rss_mb(grandchild) > 0
        assert cpu_s(proc.pid) >= cpu_s(grandchild)
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait(timeout=10)
    assert process_tree(proc.pid) == [proc.pid]  # gone: nothing below, nothing counted
    assert cpu_s(proc.pid) == 0.0 and rss_mb(proc.pid) == 0.0


def test_timer_floor_measures_a_bare_loop() -> None:
    floor = timer_floor(0.05, 4, duration_s=0.5, nice=0)
    assert set(floor) == {"timer_floor_p50_ms", "timer_floor_p99_ms", "timer_floor_max_ms"}
    assert 0 <= floor["timer_floor_p50_ms"] <= floor["timer_floor_p99_ms"]
    assert floor["timer_floor_p99_ms"] <= floor["timer_floor_max_ms"]
