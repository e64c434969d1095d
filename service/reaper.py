"""Engine processes do not outlive a killed parent. vLLM runs each engine in child processes; when the parent
is killed with SIGKILL (the batch command's documented resume path), they are left running, holding
gigabytes. `start()` launches a small watcher process that records the parent's descendants every second
and, once the parent is gone, SIGKILLs those still alive (matched by pid and start time, so a reused pid
is never touched). Linux only (/proc); elsewhere it does nothing."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

WATCHER = r"""
import os, signal, sys, time
parent = int(sys.argv[1])
def stat(pid):
    try:
        fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
        return int(fields[1]), fields[19]  # ppid, start time
    except (OSError, IndexError, ValueError):
        return None
def descendants(root):
    table = {}
    for name in os.listdir("/proc"):
        if name.isdigit() and (s := stat(int(name))):
            table[int(name)] = s
    found, frontier = {}, [root]
    while frontier:
        pid = frontier.pop()
        for child, (ppid, start) in table.items():
            if ppid == pid and child not in found:
                found[child] = start
                frontier.append(child)
    return found
seen = {}
while stat(parent) is not None and os.getppid() == parent:
    seen.update(descendants(parent))
    time.sleep(1)
for pid, start in seen.items():
    now = stat(pid)
    if now is not None and now[1] == start and pid != os.getpid():
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
"""


def start() -> subprocess.Popen | None:
    """Watch this process; its engine processes die with it, however it dies."""
    if not Path("/proc/self/stat").exists():
        return None
    return subprocess.Popen(
        [sys.executable, "-c", WATCHER, str(os.getpid())],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # not in the parent's process group: a Ctrl-C there does not stop the watch
    )
