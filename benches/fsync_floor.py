#!/usr/bin/env python3
"""The durability floor of this disk: the least that "on disk before ack"
costs per instance, whoever implements it, for one 525 KB instance:

  data : write the file and fdatasync it (nothing else: its name is not
         durable yet, so this alone does not survive a crash)
  full : write, fdatasync, rename into place, fsync the directory (the
         classic durable file store; the floor issue 18 measures against)

    python3 benches/fsync_floor.py DIR [N]
Prints: floor_ms_per_instance <full> data_ms_per_instance <data>
"""
import os
import sys
import time

d = sys.argv[1]
n = int(sys.argv[2]) if len(sys.argv) > 2 else 300
final = os.path.join(d, "final")
os.makedirs(final, exist_ok=True)
payload = os.urandom(525_000)


def run(full):
    dirfd = os.open(final, os.O_RDONLY)
    t = time.perf_counter()
    for i in range(n):
        tmp = os.path.join(d, f"{i}.part")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.write(fd, payload)
        os.fdatasync(fd)
        os.close(fd)
        if full:
            os.rename(tmp, os.path.join(final, f"{i}.dcm"))
            os.fsync(dirfd)
    elapsed = time.perf_counter() - t
    os.close(dirfd)
    for base in (d, final):
        for f in os.listdir(base):
            p = os.path.join(base, f)
            if os.path.isfile(p):
                os.remove(p)
    return elapsed / n * 1000


run(True)  # warm-up: allocation patterns settle
full = run(True)
data = run(False)
print(f"floor_ms_per_instance {full:.3f} data_ms_per_instance {data:.3f}")
