"""The idle footprint for scripts/scale.sh: healthgate with the quick start's demo policy (the
environment gives DEMO_POSTGRES_URL and DEMO_REDIS_URL). Start → first ready answer (the first
2xx of /ready, polled every 2 ms from the moment the process is spawned), then RSS after 5 s idle.
Repeated 5 times; prints a Markdown table of the median and the range.

  scale_idle.py BIN POLICY
"""

import os
import statistics
import subprocess
import sys
import time

from scale_checks import free_port, get_status as status


def memory(pid):
    fields = {}
    for line in open(f"/proc/{pid}/status"):
        key, _, value = line.partition(":")
        if key in ("VmRSS", "RssAnon", "RssFile"):
            fields[key] = int(value.split()[0]) / 1024
    return fields


def once(binary, policy):
    addr = f"127.0.0.1:{free_port()}"
    env = dict(os.environ, RUST_LOG="warn")
    spawned = time.monotonic()
    hg = subprocess.Popen(
        [binary, "serve", "--policy", policy, "--listen", addr, "--drain-delay", "0s"],
        env=env,
        stderr=subprocess.DEVNULL,
    )
    try:
        while True:
            code = status(f"http://{addr}/ready")
            if code is not None and 200 <= code < 300:
                break
            if hg.poll() is not None or time.monotonic() - spawned > 30:
                raise RuntimeError("healthgate never answered ready")
            time.sleep(0.002)
        first_ready = time.monotonic() - spawned
        time.sleep(5)
        return first_ready, memory(hg.pid)
    finally:
        hg.terminate()
        hg.wait(10)


def main():
    binary, policy = sys.argv[1], sys.argv[2]
    runs = [once(binary, policy) for _ in range(5)]
    ready = [r[0] * 1e3 for r in runs]
    rows = {k: [r[1][k] for r in runs] for k in ("VmRSS", "RssAnon", "RssFile")}
    print(
        f"\nIdle footprint with {policy}, 5 starts: start → first 2xx /ready polled every 2 ms "
        "from spawn; memory from /proc/PID/status after 5 s idle.\n"
    )
    print("| measure | median | min | max |")
    print("|---|---|---|---|")
    print(
        f"| start → first ready answer | {statistics.median(ready):.0f} ms "
        f"| {min(ready):.0f} ms | {max(ready):.0f} ms |"
    )
    for key, label in (
        ("VmRSS", "idle RSS"),
        ("RssAnon", "of which heap and stacks (RssAnon)"),
        ("RssFile", "of which mapped binary (RssFile)"),
    ):
        v = rows[key]
        print(f"| {label} | {statistics.median(v):.1f} MiB | {min(v):.1f} MiB | {max(v):.1f} MiB |")


if __name__ == "__main__":
    main()
