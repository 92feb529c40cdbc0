"""Journal benchmark (issue 14): see benches/journal.sh.

1. The writer's rate through the gateway's own path (channel, writer thread, batches):
   JB_WRITER_EVENTS events into a scratch journal, per backend.
2. A journal of JB_EVENTS events (a year of synthetic traffic, bulk-loaded with the writer's
   own batches, indexes rebuilt after), then `passerelle track` and `stats` timed as an
   administrator runs them (the whole command: start, open, query, print), JB_REPEAT times
   each: min / median / max wall seconds.
"""

import os
import re
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchlib as B  # noqa: E402

H = B.H
REPO = B.REPO
EVENTS = int(os.environ.get("JB_EVENTS", "10000000"))
WRITER_EVENTS = int(os.environ.get("JB_WRITER_EVENTS", "300000"))
REPEAT = int(os.environ.get("JB_REPEAT", "5"))
BACKENDS = os.environ.get("JB_BACKENDS", "sqlite,postgres").split(",")
FILL_TIMEOUT = int(os.environ.get("JB_FILL_TIMEOUT", "1800"))
FILL = os.path.join(REPO, "target", "release", "examples", "journal_fill")


def config(path, journal):
    lines = ["[server]", 'hostname = "bench.test"', 'spool = "%s"' % os.path.dirname(path), "",
             "[journal]"]
    lines += ["%s = %s" % (k, H._toml_value(v)) for k, v in journal.items()]
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return path


def fill(cfg, n, bulk):
    argv = [FILL, cfg, str(n)] + (["--bulk"] if bulk else [])
    r = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       timeout=FILL_TIMEOUT)
    out = r.stdout.decode()
    if r.returncode != 0:
        raise B.BenchError("journal_fill failed: %s\n%s" % (out, r.stderr.decode()[-2000:]))
    samples = dict(re.findall(r"^sample (\S+) (.*)$", out, re.M))
    return out.splitlines()[0], samples


def timed(cfg, *args):
    times, rc, lines = [], None, 0
    for _ in range(REPEAT):
        t = time.monotonic()
        r = subprocess.run([B.PASSERELLE_BIN] + list(args) + ["--config", cfg], stdin=subprocess.DEVNULL,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=600)
        times.append(time.monotonic() - t)
        rc, lines = r.returncode, len(r.stdout.splitlines())
    return min(times), statistics.median(times), max(times), rc, lines


def month_bounds(ms):
    """The calendar month (UTC) holding ms, as YYYY-MM-01 dates."""
    t = time.gmtime(ms / 1000)
    y, m = t.tm_year, t.tm_mon
    ny, nm = (y + 1, 1) if m == 12 else (y, m + 1)
    return "%04d-%02d-01" % (y, m), "%04d-%02d-01" % (ny, nm)


def queries(cfg, s):
    since, until = month_bounds(int(s["time"]))
    return [
        ("track --to", ["track", "--to", s["to"]]),
        ("track --to --limit 10", ["track", "--to", s["to"], "--limit", "10"]),
        ("track --id", ["track", "--id", s["id"]]),
        ("track --message-id", ["track", "--message-id", s["message-id"]]),
        ("track --from --since 30d", ["track", "--from", s["from"], "--since", "30d"]),
        ("track --to (no match)", ["track", "--to", "nobody@nowhere.mssante.fr"]),
        ("track --status bounced --since 7d", ["track", "--status", "bounced", "--since", "7d"]),
        ("stats --by establishment, one month, csv",
         ["stats", "--by", "establishment", "--since", since, "--until", until, "--format", "csv"]),
        ("stats --by day --since 30d", ["stats", "--by", "day", "--since", "30d"]),
    ]


def run_backend(kind, tmp):
    d = os.path.join(tmp, kind)
    os.makedirs(d, exist_ok=True)
    os.chmod(d, 0o755)
    journal = {"kind": kind, "batch_size": 10000, "buffer": 200000, "retention": "0"}
    if kind == "postgres":
        pg = H.Postgres(d, start=False)
        with open(os.path.join(pg.data, "postgresql.conf"), "a") as f:
            f.write("shared_buffers = 512MB\nmaintenance_work_mem = 512MB\nwork_mem = 64MB\n"
                    "max_wal_size = 4GB\ncheckpoint_timeout = 30min\n")
        pg.start()
        url_w = pg.createdb("writer")
        url = pg.createdb("passerelle")
    results = []
    # 1. The writer's rate, through the gateway's path.
    wj = dict(journal, path=os.path.join(d, "writer.sqlite"))
    if kind == "postgres":
        wj = dict(journal, url=url_w)
    line, _ = fill(config(os.path.join(d, "writer.toml"), wj), WRITER_EVENTS, bulk=False)
    B.log("%s: %s" % (kind, line))
    results.append(("write", line))
    # 2. The big journal, then the queries.
    bj = dict(journal, path=os.path.join(d, "journal.sqlite"))
    if kind == "postgres":
        bj = dict(journal, url=url)
    cfg = config(os.path.join(d, "journal.toml"), bj)
    t = time.monotonic()
    line, samples = fill(cfg, EVENTS, bulk=True)
    B.log("%s: %s (%.0f s in all)" % (kind, line, time.monotonic() - t))
    results.append(("fill", line))
    if kind == "sqlite":
        size = sum(os.path.getsize(os.path.join(d, f)) for f in os.listdir(d) if f.startswith("journal.sqlite"))
    else:
        size = int(pg.psql("SELECT pg_database_size('passerelle')"))
    results.append(("size", "%.2f GB on disk, %d bytes per event" % (size / 1e9, size // max(EVENTS, 1))))
    for name, args in queries(cfg, samples):
        lo, med, hi, rc, lines = timed(cfg, *args)
        B.log("%s: %-45s %.3f / %.3f / %.3f s (exit %d, %d lines)" % (kind, name, lo, med, hi, rc, lines))
        results.append((name, "%.3f / %.3f / %.3f s (exit %d, %d lines)" % (lo, med, hi, rc, lines)))
    if kind == "postgres":
        pg.stop()
    return results


def main():
    global FILL
    B.install_signal_handlers()
    if not os.access(FILL, os.X_OK):
        raise B.BenchError("missing %s (cargo build --release --example journal_fill)" % FILL)
    tmp = B.workdir("passerelle-bench-journal.")
    built = B.freeze_binaries(tmp)
    frozen = os.path.join(tmp, "bin", "journal_fill")
    subprocess.run(["cp", FILL, frozen], check=True)
    FILL = frozen
    B.log("binaries: %s" % built)
    print("# journal benchmark, %s, %d events, %s" % (time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                                                     EVENTS, B.machine()))
    for kind in BACKENDS:
        for name, value in run_backend(kind, tmp):
            print("| %s | %s | %s |" % (kind, name, value))
        sys.stdout.flush()
    # The big files go at once (workdir's atexit would too).
    if not os.environ.get("BENCH_KEEP"):
        subprocess.run(["rm", "-rf", tmp])


if __name__ == "__main__":
    try:
        main()
    except B.BenchError as e:
        print("journal benchmark: %s" % e, file=sys.stderr)
        sys.exit(2)
