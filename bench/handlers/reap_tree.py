#!/usr/bin/env python3
"""Runs a command as a child subreaper, so that /usr/bin/time counts its whole process tree.

    /usr/bin/time -f ... python3 -S reap_tree.py COMMAND [ARGS...]

/usr/bin/time reports the CPU time and context switches of the processes that it, and the
processes below it, waited for. A daemon that a command leaves behind is re-parented to init and
never counted: Ray's raylet and GCS server are started by the driver and killed at
ray.shutdown(), and the Ray workers they started then exit as orphans (about 40 % of Ray's CPU
time in a small run), and Dask leaves its multiprocessing helper process. As a subreaper
(prctl(PR_SET_CHILD_SUBREAPER)) this process inherits every orphan below it and waits for all of
them before it exits, so their times are in its children's rusage. Orphans still alive
60 seconds after the command has exited are killed (and reported). The exit status is the
command's. Stdlib only, Linux only.
"""

import ctypes
import os
import signal
import subprocess
import sys
import time

PR_SET_CHILD_SUBREAPER = 36
GRACE_S = 60.0


def children():
    me = str(os.getpid())
    found = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open(f"/proc/{pid}/stat", "rb") as f:
                    stat = f.read()
            except OSError:
                continue
            if stat[stat.rindex(b")") + 2 :].split()[1].decode() == me:
                found.append(int(pid))
    return found


def main():
    if len(sys.argv) < 2:
        sys.exit(f"usage: {sys.argv[0]} COMMAND [ARGS...]")
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        sys.exit(f"reap_tree: prctl(PR_SET_CHILD_SUBREAPER): {os.strerror(ctypes.get_errno())}")
    rc = subprocess.call(sys.argv[1:])
    deadline = time.monotonic() + GRACE_S
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            break  # nothing left below us
        if pid:
            continue
        if time.monotonic() > deadline:
            left = children()
            print(f"reap_tree: killing {len(left)} orphans still alive after {GRACE_S:.0f} s: "
                  f"{left}", file=sys.stderr)
            for p in left:
                try:
                    os.kill(p, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            deadline = float("inf")
        time.sleep(0.005)
    sys.exit(rc)


if __name__ == "__main__":
    main()
