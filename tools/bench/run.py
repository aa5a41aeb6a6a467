#!/usr/bin/env python3
"""arbor against reladiff on the same PostgreSQL tables, in one run.

Driven by tools/bench/run.sh, which provides PostgreSQL, the release
binary and a venv with reladiff. For each N:

  1. database L gets an orders-like table of N rows (~200 bytes each);
     databases R and S are copies of it (CREATE DATABASE ... TEMPLATE);
  2. drift #1 lands in R: P % of N keys, a third each updated, deleted and
     inserted, chosen deterministically (ids by residue), so the expected
     drift set is known exactly;
  3. reladiff hashdiff L vs R (median of --runs);
  4. arbor cold: agents on L and R (logical change capture), indexes built
     from nothing, then one compare -- timed from the agents' start;
  5. arbor warm: drift #2 lands in R and reaches R's index through change
     capture; then compares (median of --runs) -- the nightly case;
  6. arbor on identical tables: an agent on S, compares L vs S;
  7. COPY (binary) of L into /dev/null and `arbor index build` of L, for
     the build rate (medians of --runs pairs, alternating).

Every tool's drift is checked against the expected set. Prints one table,
writes results/bench-N.json and (over all results in the directory) a PNG
chart of time against N.
"""

import argparse
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse

COLUMNS = [
    ("customer_id", "integer"),
    ("status", "text"),
    ("amount", "decimal"),
    ("currency", "text"),
    ("created_at", "timestamp"),
    ("updated_at", "timestamp"),
    ("shipping_address", "text"),
    ("note", "text"),
]

# How long drift #2 may take to reach the index through change capture.
CAPTURE_WAIT_S = 600

LOAD_SQL = """
CREATE TABLE orders (
  id bigint PRIMARY KEY, customer_id bigint NOT NULL, status text NOT NULL,
  amount numeric(12,2) NOT NULL, currency text NOT NULL,
  created_at timestamp NOT NULL, updated_at timestamp NOT NULL,
  shipping_address text NOT NULL, note text);
INSERT INTO orders
SELECT g, g % 100000, (ARRAY['new','paid','shipped','returned'])[1 + g % 4],
       (g % 100000) / 100.0, 'EUR',
       timestamp '2024-01-01' + g * interval '1 second',
       timestamp '2024-06-01' + g * interval '1 second',
       g || ' Orchard Lane, Building ' || (g % 13) || ', Springfield Heights, OR 97'
         || lpad((g % 1000)::text, 3, '0'),
       CASE WHEN g % 7 = 0 THEN NULL ELSE 'deliver to the back door, ring twice' END
FROM generate_series(1, {n}) g;
ALTER TABLE orders REPLICA IDENTITY DEFAULT;
VACUUM ANALYZE orders;
"""


def log(*args):
    print("bench:", *args, file=sys.stderr, flush=True)


def psql(url, sql):
    """Runs SQL (statements one by one, as a script); returns the output."""
    out = subprocess.run(
        ["psql", url, "-v", "ON_ERROR_STOP=1", "-qtAX", "-f", "-"],
        input=sql,
        capture_output=True,
        text=True,
    )
    if out.returncode != 0:
        raise SystemExit(f"psql failed on {url}: {out.stderr.strip()}\n{sql.strip()[:500]}")
    return out.stdout.strip()


def with_db(url, db):
    u = urllib.parse.urlsplit(url)
    return urllib.parse.urlunsplit((u.scheme, u.netloc, "/" + db, u.query, u.fragment))


def timed_child(cmd, env=None):
    """Runs cmd; returns (seconds, peak RSS MiB of that process, stdout, stderr, rc)."""
    start = time.monotonic()
    r, w = os.pipe()
    er, ew = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.dup2(w, 1)
        os.dup2(ew, 2)
        os.close(r)
        os.close(er)
        try:
            os.execvpe(cmd[0], cmd, env or os.environ)
        finally:
            os._exit(127)
    os.close(w)
    os.close(ew)
    out_chunks, err_chunks = [], []
    import selectors

    sel = selectors.DefaultSelector()
    sel.register(r, selectors.EVENT_READ, out_chunks)
    sel.register(er, selectors.EVENT_READ, err_chunks)
    open_fds = 2
    while open_fds:
        for key, _ in sel.select():
            data = os.read(key.fd, 1 << 16)
            if data:
                key.data.append(data)
            else:
                sel.unregister(key.fd)
                os.close(key.fd)
                open_fds -= 1
    _, status, usage = os.wait4(pid, 0)
    elapsed = time.monotonic() - start
    rc = os.waitstatus_to_exitcode(status)
    return (
        elapsed,
        usage.ru_maxrss / 1024.0,
        b"".join(out_chunks).decode(),
        b"".join(err_chunks).decode(),
        rc,
    )


class Agent:
    """An `arbor agent` process on one database."""

    def __init__(self, arbor, work, name, url, capture):
        self.name = name
        self.dir = os.path.join(work, name)
        os.makedirs(self.dir, exist_ok=True)
        cols = ",\n".join(
            f'  {{ source = "{c}", kind = "{k}" }}' for c, k in COLUMNS
        )
        cap = (
            f'capture = {{ mode = "logical", slot = "arbor_bench_{name}", '
            f'publication = "arbor_bench_{name}", create = true, interval_ms = 100 }}\n'
            if capture
            else ""
        )
        with open(os.path.join(self.dir, "agent.toml"), "w") as f:
            f.write(
                f'[agent]\nlisten = "127.0.0.1:0"\ndata_dir = "data"\n\n'
                f'[[dataset]]\nname = "orders"\nsecret = "bench secret"\n'
                f'source = {{ kind = "postgres", url = "{url}", table = "orders" }}\n'
                f'key = [{{ source = "id", kind = "integer" }}]\n'
                f"columns = [\n{cols}\n]\n{cap}"
            )
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            [arbor, "agent", "--config", "agent.toml"],
            cwd=self.dir,
            stdout=subprocess.PIPE,
            stderr=open(os.path.join(self.dir, "agent.log"), "w"),
            env={**os.environ, "RUST_LOG": "info"},
        )
        line = self.proc.stdout.readline().decode().strip()
        if not line.startswith("listening on "):
            raise SystemExit(f"agent {name} did not start: {line!r} (see {self.dir}/agent.log)")
        self.address = "http://" + line[len("listening on ") :]

    def peak_rss_mib(self):
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
        return float("nan")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def arbor_compare(arbor, left, right):
    """One `arbor compare`: (seconds, summary, drift entries, rc)."""
    start = time.monotonic()
    p = subprocess.run(
        [arbor, "compare", "--agent", left.address, "--dataset", "orders",
         "--peer", right.address, "--json", "--limit", "0"],
        capture_output=True,
        text=True,
    )
    elapsed = time.monotonic() - start
    lines = [l for l in p.stdout.splitlines() if l.strip()]
    if not lines:
        return elapsed, None, [], p.returncode, p.stderr
    summary = json.loads(lines[0])
    return elapsed, summary, [json.loads(l) for l in lines[1:]], p.returncode, p.stderr


def arbor_drift(entries):
    out = set()
    for d in entries:
        out.add((d["kind"], int(d["key"])))
    return out


def wait_ready(arbor, left, right, timeout=7200):
    """Compares until both agents serve; returns the first completed compare."""
    deadline = time.monotonic() + timeout
    while True:
        elapsed, summary, drift, rc, err = arbor_compare(arbor, left, right)
        if summary is not None and summary.get("status") == "completed":
            return elapsed, summary, drift
        if time.monotonic() > deadline:
            raise SystemExit(f"agents not ready after {timeout} s: {err or summary}")
        time.sleep(0.1)


def drift_sets(n, pct, round_no):
    """Drift `round_no` (1 or 2): ids updated, deleted and inserted in R."""
    k = max(3, int(n * pct / 100.0))
    per = k // 3
    step = max(7, n // per)
    # Round 1 uses residues 1 and 2, round 2 residues 3 and 4.
    r_upd, r_del = (1, 2) if round_no == 1 else (3, 4)
    upd = [i for i in range(r_upd, n + 1, step)][:per]
    dele = [i for i in range(r_del, n + 1, step)][:per]
    base = n + 1 + (0 if round_no == 1 else per)
    ins = list(range(base, base + per))
    return upd, dele, ins


def apply_drift(url, upd, dele, ins):
    def id_list(ids):
        return "ARRAY[" + ",".join(map(str, ids)) + "]::bigint[]"

    psql(
        url,
        f"""
        BEGIN;
        UPDATE orders SET status = 'drifted', amount = amount + 1
          WHERE id = ANY({id_list(upd)});
        DELETE FROM orders WHERE id = ANY({id_list(dele)});
        INSERT INTO orders
        SELECT g, g % 100000, 'new', 1.00, 'EUR', timestamp '2025-01-01',
               timestamp '2025-01-01', g || ' Inserted Road', NULL
        FROM unnest({id_list(ins)}) g;
        COMMIT;
        """,
    )


def expected_set(rounds):
    exp = set()
    for upd, dele, ins in rounds:
        exp |= {("changed", i) for i in upd}
        exp |= {("missing_right", i) for i in dele}
        exp |= {("missing_left", i) for i in ins}
    return exp


def reladiff_run(venv, url_l, url_r):
    # SQLAlchemy-style scheme.
    url_l, url_r = (u.replace("postgres://", "postgresql://", 1) for u in (url_l, url_r))
    cmd = [
        os.path.join(venv, "bin", "reladiff"),
        url_l, "orders", url_r, "orders",
        "-k", "id", "-a", "hashdiff", "--json",
    ]
    for c, _ in COLUMNS:
        cmd += ["-c", c]
    # reladiff prints through rich, which wraps lines (inside JSON strings)
    # at the terminal width, 80 columns without a terminal.
    secs, rss, out, err, rc = timed_child(cmd, {**os.environ, "COLUMNS": "1000000"})
    # reladiff exits 0 on some errors (e.g. an unsupported URL scheme).
    if rc != 0 or "ERROR" in err:
        raise SystemExit(f"reladiff failed ({rc}): {err[-2000:]}")
    minus, plus = set(), set()
    for line in out.splitlines():
        line = line.strip()
        if not line:
            continue
        # reladiff --json: ["-", ["<id>", ...]] or ["+", [...]] per line.
        try:
            rec = json.loads(line)
        except ValueError:
            raise SystemExit(f"unexpected reladiff output: {line!r}")
        if not (isinstance(rec, list) and len(rec) == 2 and rec[0] in "+-"):
            raise SystemExit(f"unexpected reladiff output: {line}")
        sign, key = rec[0], int(rec[1][0])
        (minus if sign == "-" else plus).add(key)
    drift = {("changed", i) for i in minus & plus}
    drift |= {("missing_right", i) for i in minus - plus}
    drift |= {("missing_left", i) for i in plus - minus}
    return secs, rss, drift, cmd


def median(xs):
    return statistics.median(xs) if xs else float("nan")


def bench(args, n):
    work = tempfile.mkdtemp(prefix=f"arbor-bench-{n}-", dir=args.work)
    url = args.pg
    dbs = {s: f"arbor_bench_{s}" for s in ("l", "r", "s")}
    urls = {s: with_db(url, db) for s, db in dbs.items()}
    for db in dbs.values():
        psql(url, f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")
    for slot in ("arbor_bench_l", "arbor_bench_r"):
        psql(url, f"SELECT pg_drop_replication_slot('{slot}') FROM pg_replication_slots WHERE slot_name = '{slot}'")
    # Three copies of the table (~290 bytes a row with its index), WAL,
    # two indexes and a build: ~1 KB a row. A full disk fails the run half
    # way with PostgreSQL errors that do not name the cause.
    try:
        places = {psql(url, "SHOW data_directory"), work}
    except SystemExit:  # a role that may not read the setting
        places = {work}
    need = n * 1000
    for where in places:
        if not os.path.isdir(where):  # a server on another machine
            continue
        free = shutil.disk_usage(where).free
        if free < need:
            raise SystemExit(
                f"N={n} needs about {need >> 30} GiB free on the disk of {where}; "
                f"it has {free >> 30} GiB")
    log(f"N={n}: loading {n} rows")
    t = time.monotonic()
    psql(url, f"CREATE DATABASE {dbs['l']}")
    psql(urls["l"], LOAD_SQL.format(n=n))
    psql(url, f"CHECKPOINT")
    psql(url, f"CREATE DATABASE {dbs['r']} TEMPLATE {dbs['l']}")
    psql(url, f"CREATE DATABASE {dbs['s']} TEMPLATE {dbs['l']}")
    heap = psql(urls["l"], "SELECT pg_total_relation_size('orders')")
    log(f"N={n}: loaded in {time.monotonic() - t:.0f} s ({int(heap) >> 20} MiB per table)")

    round1 = drift_sets(n, args.drift, 1)
    apply_drift(urls["r"], *round1)
    exp1 = expected_set([round1])

    results = {"rows": n, "drift_pct": args.drift, "expected_drift": len(exp1),
               "cores": os.cpu_count(), "table_bytes": int(heap),
               "postgres": psql(url, "SHOW server_version"), "tools": {}}

    # reladiff
    times, rss, ok = [], [], True
    for i in range(args.reladiff_runs):
        secs, peak, drift, cmd = reladiff_run(args.venv, urls["l"], urls["r"])
        times.append(secs)
        rss.append(peak)
        ok &= drift == exp1
        log(f"N={n}: reladiff run {i + 1}: {secs:.1f} s, {len(drift)} drifting keys, correct={drift == exp1}")
    results["tools"]["reladiff hashdiff"] = {
        "seconds": median(times), "runs": times, "peak_rss_mib": max(rss),
        "wire_bytes": None, "correct": ok, "command": " ".join(cmd[:1] + ["L", "orders", "R", "orders"] + cmd[5:]),
    }

    # arbor cold
    start = time.monotonic()
    left = Agent(args.arbor, work, "l", urls["l"], capture=True)
    right = Agent(args.arbor, work, "r", urls["r"], capture=True)
    agents = [left, right]
    try:
        _, summary, drift = wait_ready(args.arbor, left, right)
        cold = time.monotonic() - start
        got = arbor_drift(drift)
        results["tools"]["arbor cold"] = {
            "seconds": cold, "runs": [cold],
            "peak_rss_mib": max(a.peak_rss_mib() for a in agents),
            "wire_bytes": summary["cost"]["peer_bytes"],
            "round_trips": summary["cost"]["round_trips"],
            "correct": got == exp1,
        }
        log(f"N={n}: arbor cold: {cold:.1f} s, {len(got)} drifting keys, correct={got == exp1}")

        # arbor warm: drift #2 through change capture
        round2 = drift_sets(n, args.drift, 2)
        apply_drift(urls["r"], *round2)
        exp2 = expected_set([round1, round2])
        deadline = time.monotonic() + CAPTURE_WAIT_S
        while True:
            _, summary, drift, rc, err = arbor_compare(args.arbor, left, right)
            if summary and arbor_drift(drift) == exp2:
                break
            if time.monotonic() > deadline:
                raise SystemExit(f"drift #2 never reached the index: {err}")
            time.sleep(0.2)
        times, ok, wire, per_key = [], True, [], []
        for _ in range(args.runs):
            secs, summary, drift, rc, err = arbor_compare(args.arbor, left, right)
            times.append(secs)
            ok &= arbor_drift(drift) == exp2
            wire.append(summary["cost"]["peer_bytes"])
        results["expected_drift_warm"] = len(exp2)
        results["tools"]["arbor warm"] = {
            "seconds": median(times), "runs": times,
            "peak_rss_mib": max(a.peak_rss_mib() for a in agents),
            "wire_bytes": median(wire), "round_trips": summary["cost"]["round_trips"],
            "bytes_per_divergent_record": median(wire) / max(1, len(exp2)),
            "correct": ok, "drift": len(exp2),
        }
        log(f"N={n}: arbor warm: {median(times) * 1000:.0f} ms, correct={ok}")

        # identical tables
        same = Agent(args.arbor, work, "s", urls["s"], capture=False)
        agents.append(same)
        wait_ready(args.arbor, left, same)
        # S is L before any drift: L never changed, so they are identical.
        times, ok, wire = [], True, []
        for _ in range(args.runs):
            secs, summary, drift, rc, err = arbor_compare(args.arbor, left, same)
            times.append(secs)
            ok &= rc == 0 and not drift
            wire.append(summary["cost"]["peer_bytes"])
        results["tools"]["arbor identical"] = {
            "seconds": median(times), "runs": times,
            "peak_rss_mib": same.peak_rss_mib(), "wire_bytes": median(wire),
            "round_trips": summary["cost"]["round_trips"], "correct": ok,
            "in_process_ms": summary["cost"]["elapsed_ms"],
        }
        log(f"N={n}: arbor identical: {median(times) * 1000:.0f} ms, correct={ok}")
        disk = {a.name: du(os.path.join(a.dir, "data")) for a in agents}
        results["index_disk_bytes"] = disk["l"]
    finally:
        for a in agents:
            a.stop()
        for slot in ("arbor_bench_l", "arbor_bench_r"):
            try:
                psql(url, f"SELECT pg_drop_replication_slot('{slot}') FROM pg_replication_slots WHERE slot_name = '{slot}'")
            except SystemExit:
                pass

    # Build rate against COPY (binary) of the same table: median of --runs
    # pairs, the two alternating so that both see the same machine.
    cfg = os.path.join(work, "l", "agent.toml")
    build_dir = os.path.join(work, "build")
    text = open(cfg).read().replace('data_dir = "data"', f'data_dir = "{build_dir}"')
    text = re.sub(r"capture = .*\n", "", text)
    build_cfg = os.path.join(work, "build.toml")
    open(build_cfg, "w").write(text)
    copy_times, build_times, build_rss = [], [], 0
    for i in range(args.runs):
        copy_s, _, _, err, rc = timed_child(
            ["psql", urls["l"], "-qc", "\\copy orders TO '/dev/null' WITH (FORMAT binary)"])
        if rc != 0:
            raise SystemExit(f"COPY failed: {err}")
        shutil.rmtree(build_dir, ignore_errors=True)
        build_s, rss, out, err, rc = timed_child(
            [args.arbor, "index", "build", "--config", build_cfg, "--dataset", "orders"])
        if rc != 0:
            raise SystemExit(f"arbor index build failed: {err}")
        copy_times.append(copy_s)
        build_times.append(build_s)
        build_rss = max(build_rss, rss)
        log(f"N={n}: run {i + 1}: COPY binary {copy_s:.2f} s; arbor index build {build_s:.2f} s")
    copy_s, build_s = median(copy_times), median(build_times)
    results["copy_binary_rows_per_s"] = n / copy_s
    results["build_rows_per_s"] = n / build_s
    results["copy_binary_seconds"] = copy_times
    results["build_seconds"] = build_times
    results["build_peak_rss_mib"] = build_rss
    log(f"N={n}: COPY binary {n / copy_s:,.0f} rows/s; arbor index build {n / build_s:,.0f} rows/s (medians)")

    for db in dbs.values():
        psql(url, f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")
    subprocess.run(["rm", "-rf", work])
    return results


def du(path):
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            try:
                total += os.path.getsize(os.path.join(root, f))
            except OSError:
                pass
    return total


def table(r):
    rel = r["tools"]["reladiff hashdiff"]["seconds"]
    lines = [
        f"N = {r['rows']:,} rows, {r['drift_pct']} % drift ({r['expected_drift']:,} keys; "
        f"{r.get('expected_drift_warm', 0):,} after the warm round), {r['cores']} cores, "
        f"PostgreSQL {r['postgres']}",
        f"{'tool':<20} {'wall time':>12} {'ratio':>8} {'peak RSS':>10} {'wire bytes':>12} {'correct':>8}",
    ]
    for name, t in r["tools"].items():
        s = t["seconds"]
        wall = f"{s:.2f} s" if s >= 1 else f"{s * 1000:.0f} ms"
        wire = "-" if t["wire_bytes"] is None else f"{int(t['wire_bytes']):,}"
        lines.append(
            f"{name:<20} {wall:>12} {s / rel:>8.4f} {t['peak_rss_mib']:>7.0f} MiB {wire:>12} "
            f"{'yes' if t['correct'] else 'NO':>8}"
        )
    lines.append(
        f"index build {r['build_rows_per_s']:,.0f} rows/s vs COPY binary "
        f"{r['copy_binary_rows_per_s']:,.0f} rows/s: ratio "
        f"{r['build_rows_per_s'] / r['copy_binary_rows_per_s']:.2f}; "
        f"bytes per divergent record (warm) "
        f"{r['tools']['arbor warm']['bytes_per_divergent_record']:.0f}; "
        f"index on disk {r['index_disk_bytes'] / 2**20:.0f} MiB"
    )
    return "\n".join(lines)


def chart(results_dir):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = []
    for f in sorted(os.listdir(results_dir)):
        if f.startswith("bench-") and f.endswith(".json"):
            runs.append(json.load(open(os.path.join(results_dir, f))))
    runs.sort(key=lambda r: r["rows"])
    if not runs:
        return None
    fig, ax = plt.subplots(figsize=(8, 5))
    for name in runs[0]["tools"]:
        xs = [r["rows"] for r in runs if name in r["tools"]]
        ys = [r["tools"][name]["seconds"] for r in runs if name in r["tools"]]
        ax.plot(xs, ys, marker="o", label=name)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("rows per table")
    ax.set_ylabel("wall time (s)")
    ax.set_title(f"arbor vs reladiff, {runs[0]['drift_pct']} % drift, {runs[0]['cores']} cores")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    path = os.path.join(results_dir, "time-vs-rows.png")
    fig.savefig(path, dpi=100, bbox_inches="tight")
    return path


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--pg", required=True)
    p.add_argument("--arbor", required=True)
    p.add_argument("--venv", required=True)
    p.add_argument("--rows", default="1000000")
    p.add_argument("--drift", type=float, default=0.1)
    p.add_argument("--runs", type=int, default=5, help="runs of each arbor compare")
    p.add_argument("--reladiff-runs", type=int, default=3)
    p.add_argument("--results", default="results")
    p.add_argument("--work", default=None)
    args = p.parse_args()
    if psql(args.pg, "SHOW wal_level") != "logical":
        raise SystemExit("the warm case needs wal_level = logical on the PostgreSQL server")
    os.makedirs(args.results, exist_ok=True)
    for n in [int(x.replace("_", "")) for x in args.rows.split(",")]:
        r = bench(args, n)
        with open(os.path.join(args.results, f"bench-{n}.json"), "w") as f:
            json.dump(r, f, indent=2)
        print(table(r), flush=True)
        print(flush=True)
    png = chart(args.results)
    if png:
        print(f"chart: {png}; results: {args.results}/bench-*.json")


if __name__ == "__main__":
    main()
