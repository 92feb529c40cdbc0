#!/usr/bin/env python3
"""Run the end-to-end tests and print `e2e: N passed, M failed, K skipped`.

    python3 tests/e2e/run_all.py                        # discover tests/e2e/test_*.py
    python3 tests/e2e/run_all.py test_relay.QueueTests  # some tests only (unittest names)
    python3 tests/e2e/run_all.py --counts FILE          # also write "N M K" to FILE

Exit status 0 only when nothing failed (errors, failures, unexpected successes) and at
least one test ran.
"""

import argparse
import os
import signal
import sys
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))


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
    args = ap.parse_args()

    sys.dont_write_bytecode = True
    sys.path.insert(0, HERE)
    import harness

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
                                     resultclass=CountingResult)
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
    sys.exit(0 if failed == 0 and result.testsRun > 0 else 1)


if __name__ == "__main__":
    main()
