#!/usr/bin/env python3
"""The durability floor of this disk: the least that "on disk before ack"
costs per instance, whoever implements it: write one 525 KB file and
fdatasync it. (medrelay also renames, fsyncs the directory and commits the
index; this floor leaves all of that out.)

    python3 benches/fsync_floor.py DIR [N]
Prints: floor_ms_per_instance <value>
"""
import os
import sys
import time

d = sys.argv[1]
n = int(sys.argv[2]) if len(sys.argv) > 2 else 300
os.makedirs(os.path.join(d, "final"), exist_ok=True)
payload = os.urandom(525_000)
page = os.urandom(4096)
log = os.open(os.path.join(d, "wal"), os.O_RDWR | os.O_CREAT)
os.ftruncate(log, 4096 * 64)
os.fsync(log)
dirfd = os.open(os.path.join(d, "final"), os.O_RDONLY)
t = time.perf_counter()
for i in range(n):
    tmp = os.path.join(d, f"{i}.part")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
    os.write(fd, payload)
    os.fdatasync(fd)
    os.close(fd)
elapsed = time.perf_counter() - t
print(f"floor_ms_per_instance {elapsed / n * 1000:.3f}")
