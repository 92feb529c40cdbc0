#!/usr/bin/env python3
"""Run the end-to-end tests and print `e2e: N passed, M failed, K skipped`.

    python3 tests/e2e/run_all.py                        # discover tests/e2e/test_*.py
    python3 tests/e2e/run_all.py test_relay.QueueTests  # some tests only (unittest names)
    python3 tests/e2e/run_all.py --counts FILE          # also write "N M K" to FILE
    python3 tests/e2e/run_all.py --jobs 2               # modules spread over 2 worker processes

With --jobs N, the test modules are spread over N worker processes (longest first, by the
durations the last run recorded in target/test-logs/e2e-durations.json), each drawing its TCP
ports from its own range; a module that sets `E2E_ALONE = True` (load tests, crash tests,
anything measuring time or memory) runs afterwards with nothing beside it. Each worker's
output is printed whole when it ends.

Exit status 0 only when nothing failed (errors, failures, unexpected successes) and at
least one test ran.
"""

import argparse
import glob
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
DURATIONS = os.path.join(HERE, "..", "..", "target", "test-logs", "e2e-durations.json")


class CountingResult(unittest.TextTestResult):
    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.passed = 0
        self._t0 = {}

    def startTest(self, test):
        self._t0[test.id()] = time.monotonic()
        super().startTest(test)

    def addSuccess(self, test):
        self.passed += 1
        took = time.monotonic() - self._t0.get(test.id(), time.monotonic())
        if self.showAll and hasattr(self, "_write_status"):
            unittest.TestResult.addSuccess(self, test)
            self._write_status(test, "ok (%.1fs)" % took)
        else:
            super().addSuccess(test)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("names", nargs="*", help="unittest names relative to tests/e2e (module[.Class[.test]])")
    ap.add_argument("-p", "--pattern", default="test_*.py")
    ap.add_argument("-k", dest="k", action="append", help="only tests whose name contains this substring")
    ap.add_argument("--counts", help="write 'passed failed skipped' to this file")
    ap.add_argument("-q", "--quiet", action="store_true")
    ap.add_argument("--jobs", type=int, default=1, help="worker processes (modules run in parallel)")
    args = ap.parse_args()
    if args.jobs > 1 and not args.names:
        sys.exit(run_parallel(args))

    sys.dont_write_bytecode = True
    sys.path.insert(0, HERE)
    import harness

    durations = {}

    class Timed(CountingResult):
        def stopTest(self, test):
            super().stopTest(test)
            mod = test.__class__.__module__
            durations[mod] = durations.get(mod, 0.0) + time.monotonic() - self._t0.get(test.id(), time.monotonic())

    def on_term(signum, frame):
        # killed by `timeout` (tests/run.sh) or CI: leave no Postfix/peer/gateway behind
        harness.stop_everything()
        print("e2e: interrupted by signal %d" % signum, flush=True)
        os._exit(128 + signum)
    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGHUP, on_term)
    loader = unittest.TestLoader()
    if args.k:
        loader.testNamePatterns = ["*%s*" % k for k in args.k]
    if args.names:
        suite = loader.loadTestsFromNames(args.names)
    else:
        suite = loader.discover(HERE, pattern=args.pattern, top_level_dir=HERE)

    runner = unittest.TextTestRunner(stream=sys.stdout, verbosity=1 if args.quiet else 2,
                                     resultclass=Timed)
    t0 = time.monotonic()
    result = runner.run(suite)
    # a test with failing subTests counts once
    failed = len({getattr(t, "test_case", t).id() for t, _ in result.failures + result.errors})
    failed += len(result.unexpectedSuccesses)
    skipped = len(result.skipped)
    passed = result.passed
    print("e2e: %d passed, %d failed, %d skipped (%.0fs)" % (passed, failed, skipped, time.monotonic() - t0))
    if args.counts:
        with open(args.counts, "w") as f:
            f.write("%d %d %d\n" % (passed, failed, skipped))
    record_durations(durations)
    sys.exit(0 if failed == 0 and result.testsRun > 0 else 1)


def record_durations(durations):
    """Merges this run's seconds per module into DURATIONS (what --jobs balances on)."""
    try:
        with open(DURATIONS) as f:
            known = json.load(f)
    except (OSError, ValueError):
        known = {}
    known.update({k: round(v, 1) for k, v in durations.items()})
    try:
        os.makedirs(os.path.dirname(DURATIONS), exist_ok=True)
        with open(DURATIONS + ".tmp", "w") as f:
            json.dump(known, f, indent=1, sort_keys=True)
        os.replace(DURATIONS + ".tmp", DURATIONS)
    except OSError:
        pass


def alone(path):
    with open(path) as f:
        return re.search(r"(?m)^E2E_ALONE\s*=\s*True", f.read()) is not None


def run_parallel(args):
    """Spreads the modules over args.jobs workers, then runs the E2E_ALONE ones one by one."""
    modules = sorted(os.path.basename(p)[:-3] for p in glob.glob(os.path.join(HERE, args.pattern)))
    try:
        with open(DURATIONS) as f:
            known = json.load(f)
    except (OSError, ValueError):
        known = {}
    # Unknown modules are guessed from their size (about 1 s per 200 bytes of test code).
    cost = {m: known.get(m, os.path.getsize(os.path.join(HERE, m + ".py")) / 200) for m in modules}
    lonely = [m for m in modules if alone(os.path.join(HERE, m + ".py"))]
    shared = sorted((m for m in modules if m not in lonely), key=lambda m: -cost[m])
    bins = [[] for _ in range(args.jobs)]
    load = [0.0] * args.jobs
    for m in shared:
        i = load.index(min(load))
        bins[i].append(m)
        load[i] += cost[m]
    # Each worker its own port slice of 10000-32000 (below the usual ephemeral range).
    span = 22000 // args.jobs
    extra = []
    if args.quiet:
        extra.append("-q")
    for k in args.k or []:
        extra += ["-k", k]
    t0 = time.monotonic()
    totals = [0, 0, 0]
    tmp = tempfile.mkdtemp(prefix="e2e-jobs-")
    procs = []

    def spawn(i, mods, ports):
        counts = os.path.join(tmp, "counts-%d" % i)
        out = open(os.path.join(tmp, "out-%d" % i), "w+")
        env = dict(os.environ, E2E_PORTS="%d-%d" % ports)
        p = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--counts", counts] + extra + mods,
                             stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        return p, out, counts, mods

    def finish(p, out, counts, mods):
        p.wait()
        out.seek(0)
        sys.stdout.write("\n==== worker: %s\n" % " ".join(mods))
        sys.stdout.write(out.read())
        sys.stdout.flush()
        out.close()
        try:
            with open(counts) as f:
                got = [int(x) for x in f.read().split()[:3]]
        except (OSError, ValueError):
            got = [0, 1, 0]  # a worker that died without counts counts as one failure
        for j in range(3):
            totals[j] += got[j]

    def on_term(signum, frame):
        for p, *_ in procs:
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except OSError:
                pass
        print("e2e: interrupted by signal %d" % signum, flush=True)
        os._exit(128 + signum)
    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGHUP, on_term)

    for i, mods in enumerate(bins):
        if mods:
            procs.append(spawn(i, mods, (10000 + i * span, 10000 + (i + 1) * span)))
    print("e2e: %d workers: %s; then alone: %s" % (len(procs), " | ".join(" ".join(b) for b in bins if b),
                                                  " ".join(lonely) or "-"), flush=True)
    for w in procs:
        finish(*w)
    for m in lonely:
        finish(*spawn(len(bins), [m], (10000, 32000)))
    passed, failed, skipped = totals
    print("e2e: %d passed, %d failed, %d skipped (%.0fs, %d jobs)"
          % (passed, failed, skipped, time.monotonic() - t0, args.jobs))
    if args.counts:
        with open(args.counts, "w") as f:
            f.write("%d %d %d\n" % (passed, failed, skipped))
    return 0 if failed == 0 and passed > 0 else 1


if __name__ == "__main__":
    main()
