"""The "checks" part of scripts/scale.sh: one healthgate process (standalone, --policy DIR) with
N checks, N/10 policies of 10 dependencies each, for each N given; prints a Markdown table and
writes JSON for the chart.

Each policy checks 4 HTTP URLs and 3 TCP ports of its own (served by scale_targets.py, which
records when every check arrived), a Redis queue key of its own, and the shared Redis and
PostgreSQL: the shared ones are identical targets, so single flight probes each once per
interval for all policies. The environment gives DEMO_POSTGRES_URL and DEMO_REDIS_URL.

  scale_checks.py BIN OUT_JSON INTERVAL_S MEASURE_S N [N ...]
"""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

TICKS = os.sysconf("SC_CLK_TCK")
HERE = os.path.dirname(os.path.abspath(__file__))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid):
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def rss_mib(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def policy(i, ports, interval, timeout):
    http = ports["http"]
    tcp = ports["tcp"][3 * i : 3 * i + 3]
    deps = [
        f'    - {{name: web-{k}, type: http, http: {{url: "http://127.0.0.1:{http}/p{i}/d{k}"}}}}'
        for k in range(4)
    ]
    deps += [
        f'    - {{name: port-{k}, type: tcp, tcp: {{address: "127.0.0.1:{port}"}}}}'
        for k, port in enumerate(tcp)
    ]
    deps += [
        f"    - {{name: queue, type: redisQueue, redisQueue: {{urlFrom: {{env: DEMO_REDIS_URL}}, key: q{i}, degradedAbove: 1000}}}}",
        "    - {name: redis, type: redis, redis: {urlFrom: {env: DEMO_REDIS_URL}}}",
        "    - {name: postgres, type: postgres, postgres: {urlFrom: {env: DEMO_POSTGRES_URL}}}",
    ]
    return (
        "apiVersion: healthgate.dev/v1alpha1\nkind: HealthPolicy\n"
        f"metadata: {{name: scale-{i}, namespace: scale}}\n"
        f"spec:\n  defaults: {{interval: {int(interval * 1000)}ms, timeout: {timeout}}}\n"
        "  dependencies:\n" + "\n".join(deps) + "\n"
    )


def write_policies(directory, count, ports, interval, timeout):
    for i in range(count):
        path = os.path.join(directory, f"scale-{i}.yaml")
        with open(path + ".tmp", "w") as f:
            f.write(policy(i, ports, interval, timeout))
        os.rename(path + ".tmp", path)


def get(url, timeout=30):
    started = time.monotonic()
    with urllib.request.urlopen(url, timeout=timeout) as r:
        body = r.read()
    return body, time.monotonic() - started


def get_status(url):
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return None


def metric(text, name):
    total = 0.0
    found = False
    for line in text.splitlines():
        if line.startswith(name) and (len(line) == len(name) or line[len(name)] in " {"):
            total += float(line.rsplit(" ", 1)[1])
            found = True
    return total if found else None


def lag_quantile(text, q):
    buckets = []
    for line in text.splitlines():
        m = re.match(r'healthgate_check_lag_seconds_bucket\{le="([^"]+)"\} (\S+)', line)
        if m:
            buckets.append((float(m.group(1)), float(m.group(2))))
    if not buckets:
        return None
    total = buckets[-1][1]
    for le, count in buckets:
        if count >= q * total:
            return le
    return float("inf")


def events_between(path, start, end):
    out = []
    with open(path) as f:
        for line in f:
            try:
                t = float(line)
            except ValueError:
                continue
            if start <= t < end:
                out.append(t)
    return out


def spread(times, start, end, window=0.1):
    """The busiest window's count over the mean count per window."""
    slots = int((end - start) / window)
    if slots == 0 or not times:
        return None, 0.0
    counts = [0] * slots
    for t in times:
        k = int((t - start) / window)
        if 0 <= k < slots:
            counts[k] += 1
    mean = sum(counts) / slots
    return (max(counts) / mean if mean else None), mean


def wrk_p99(url, seconds):
    out = subprocess.run(
        ["wrk", "-t2", "-c32", f"-d{seconds}s", "--latency", url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    m = re.search(r"^\s+99%\s+(\S+)\s*$", out, re.M)
    if m is None:
        raise RuntimeError(f"no p99 in wrk's output for {url}:\n{out}")
    v = m.group(1)
    for unit, scale in (("us", 1e-3), ("ms", 1.0), ("s", 1e3)):
        if v.endswith(unit):
            return float(v[: -len(unit)]) * scale
    return float(v)


def run(binary, checks, interval, measure):
    policies = max(1, checks // 10)
    work = tempfile.mkdtemp(prefix="healthgate-scale-")
    ports_file, events_file = f"{work}/ports.json", f"{work}/events"
    targets = subprocess.Popen(
        [sys.executable, f"{HERE}/scale_targets.py", ports_file, events_file, str(3 * policies)]
    )
    hg = None
    try:
        while not os.path.exists(ports_file):
            if targets.poll() is not None:
                raise RuntimeError("scale_targets.py exited")
            time.sleep(0.05)
        ports = json.load(open(ports_file))
        policy_dir = f"{work}/policies"
        os.mkdir(policy_dir)
        write_policies(policy_dir, policies, ports, interval, "1s")
        addr = f"127.0.0.1:{free_port()}"
        env = dict(os.environ, RUST_LOG="warn")
        started = time.time()
        hg = subprocess.Popen(
            [binary, "serve", "--policy", policy_dir, "--listen", addr, "--drain-delay", "0s"],
            env=env,
            stderr=open(f"{work}/healthgate.log", "w"),
        )
        base = f"http://{addr}"
        while get_status(f"{base}/health") != 200:
            if hg.poll() is not None:
                raise RuntimeError(open(f"{work}/healthgate.log").read()[-2000:])
            time.sleep(0.02)
        # Start-up: every check's first round lands within one interval (the start budget sends
        # most to their phase), so the spread from the start includes it.
        time.sleep(interval + 1)
        warm = time.time()
        cpu0 = cpu_seconds(hg.pid)
        time.sleep(measure)
        cpu1 = cpu_seconds(hg.pid)
        steady_end = time.time()
        rss = rss_mib(hg.pid)
        scrapes = [get(f"{base}/metrics") for _ in range(5)]
        body, _ = scrapes[-1]
        text = body.decode()
        scrape_ms = sorted(t for _, t in scrapes)[2] * 1e3
        series = sum(1 for line in text.splitlines() if line and not line.startswith("#"))
        ready_p99 = wrk_p99(f"{base}/ready", 5)
        one_p99 = wrk_p99(f"{base}/ready/scale/scale-0", 5)
        health_p99 = wrk_p99(f"{base}/health", 5)
        ready_body, ready_s = get(f"{base}/ready")

        # A reload that changes every dependency (a new timeout restarts each checker): the
        # restarted checkers keep their phase, so the spread holds.
        write_policies(policy_dir, policies, ports, interval, "900ms")
        reload_at = time.time()
        time.sleep(2 * interval + 1)
        reload_end = time.time()
        after_reload = cpu_seconds(hg.pid)
        text_after = get(f"{base}/metrics")[0].decode()
        time.sleep(0.6)  # the targets flush their event log every 0.5 s

        first_round = events_between(events_file, started, started + interval)
        steady = events_between(events_file, warm, steady_end)
        reloaded = events_between(events_file, reload_at, reload_end)
        start_spread, _ = spread(first_round, started, started + interval)
        steady_spread, steady_mean = spread(steady, warm, steady_end)
        reload_spread, _ = spread(reloaded, reload_at, reload_end)
        probes_per_s = len(steady) / (steady_end - warm)
        result = {
            "checks": policies * 10,
            "policies": policies,
            "interval_s": interval,
            "cpu_cores": (cpu1 - cpu0) / (steady_end - warm),
            "rss_mib": rss,
            "metrics_ms": scrape_ms,
            "metrics_series": series,
            "metrics_bytes": len(body),
            "ready_p99_ms": ready_p99,
            "ready_one_p99_ms": one_p99,
            "health_p99_ms": health_p99,
            "ready_bytes": len(ready_body),
            "target_probes_per_s": probes_per_s,
            "mean_per_100ms": steady_mean,
            "spread_start": start_spread,
            "spread_steady": steady_spread,
            "spread_reload": reload_spread,
            "lag_p99_s": lag_quantile(text, 0.99),
            "lag_p99_after_reload_s": lag_quantile(text_after, 0.99),
            "check_results": metric(text, "healthgate_check_results_total"),
            "reload_cpu_s": after_reload - cpu1,
        }
        if hg.poll() is not None:
            raise RuntimeError("healthgate exited during the run")
        missing = [k for k, v in result.items() if v is None]
        if missing or not result["check_results"] or not steady or not reloaded:
            raise RuntimeError(f"a measurement came out empty: {missing} {result}")
        return result
    finally:
        for p in (hg, targets):
            if p is not None and p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()
        subprocess.run(["rm", "-rf", work])


def fmt(v, spec):
    return "n/a" if v is None else format(v, spec)


def main():
    binary, out, interval, measure = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4])
    sizes = [int(n) for n in sys.argv[5:]]
    results = []
    for n in sizes:
        print(f"scale: {n} checks ...", file=sys.stderr, flush=True)
        results.append(run(binary, n, interval, measure))
    json.dump(results, open(out, "w"), indent=2)
    print(
        f"\nOne healthgate process, standalone (`--policy DIR`), interval {interval:g}s, "
        f"steady state measured over {measure:g}s; CPU = utime+stime from /proc over that window; "
        "spread = busiest 100 ms window / mean, from when the checks reached the HTTP and TCP "
        "targets (first round from process start, steady state, and 2 intervals after a reload "
        "that restarts every checker); /ready (every policy, one body), /ready/scale/scale-0 (one policy) and /health p99 under wrk -t2 -c32 -d5s.\n"
    )
    print(
        "| checks | policies | CPU (cores) | RSS MiB | /metrics ms | series | /metrics KiB "
        "| /ready p99 ms | one policy's /ready p99 ms | /health p99 ms | target probes/s | spread start | spread steady "
        "| spread after reload | lag p99 |"
    )
    print("|" + "---|" * 15)
    for r in results:
        print(
            f"| {r['checks']:,} | {r['policies']:,} | {r['cpu_cores']:.3f} | {r['rss_mib']:.1f} "
            f"| {r['metrics_ms']:.1f} | {r['metrics_series']:,} | {r['metrics_bytes'] / 1024:,.0f} "
            f"| {r['ready_p99_ms']:.2f} | {r['ready_one_p99_ms']:.2f} | {r['health_p99_ms']:.2f} | {r['target_probes_per_s']:,.0f} "
            f"| {fmt(r['spread_start'], '.2f')}x | {fmt(r['spread_steady'], '.2f')}x "
            f"| {fmt(r['spread_reload'], '.2f')}x | ≤ {fmt(r['lag_p99_s'], 'g')} s |"
        )


if __name__ == "__main__":
    main()
