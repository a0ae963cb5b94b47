#!/usr/bin/env python3
"""Adversarial tests of `tether serve` (issue #11): hostile peers cannot hurt
the server. Every case starts its own server on a free port, attacks it, and
checks what the attacker saw, the server's memory, and that a well-behaved
client kept getting its messages.

    python3 tests/adversarial/run.py --bin target/release/tether
    python3 tests/adversarial/run.py --bin ... --only reply_flood --only ping_flood
    python3 tests/adversarial/run.py --bin ... --lenient   # drop flags the binary lacks

Prints one line per case; exit status 0 only if every case passed.
"""

import argparse
import asyncio
import os
import signal
import sys
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import harness  # noqa: E402
from cases import CASES  # noqa: E402

CASE_TIMEOUT = 90


class Context:
    def __init__(self, bin_path, debug_bin=None):
        self.bin = bin_path
        self.debug_bin = debug_bin
        self.servers = []
        self.failures = []
        self.numbers = []

    def server(self, args, rust_log="warn", bin_path=None):
        s = harness.Server(bin_path or self.bin, args, rust_log=rust_log)
        self.servers.append(s)
        return s

    def expect(self, cond, message):
        if not cond:
            self.failures.append(message)
        return cond

    def num(self, key, value):
        self.numbers.append((key, value))


async def run_case(name, fn, bin_path, debug_bin=None):
    ctx = Context(bin_path, debug_bin)
    t0 = time.monotonic()
    error = None
    harness.Server.dropped_flags = []
    task = asyncio.ensure_future(fn(ctx))
    try:
        done, _ = await asyncio.wait([task], timeout=CASE_TIMEOUT)
        if not done:
            task.cancel()
            raise harness.SetupError(f"case timed out after {CASE_TIMEOUT} s")
        task.result()
    except harness.SetupError as e:
        error = str(e)
    except Exception as e:  # noqa: BLE001 - a case's failure, reported
        tb = traceback.extract_tb(e.__traceback__)
        where = next((f"{os.path.basename(f.filename)}:{f.lineno}" for f in reversed(tb) if f.filename.endswith("cases.py")), "?")
        error = f"{type(e).__name__}: {e} (at {where})"
    for s in ctx.servers:
        panics = [l for l in s.stderr_text().splitlines() if "panicked at" in l]
        if panics:
            ctx.failures.append(f"a server task panicked ({os.path.basename(s.bin)}): {panics[0].strip()[:160]}")
        if not s.alive():
            ctx.failures.append(f"server exited with {s.proc.returncode}: {s.stderr_text().strip().splitlines()[-1:] }")
        s.stop()
    if error:
        ctx.failures.insert(0, error)
    ok = not ctx.failures
    nums = " ".join(f"{k}={v}" for k, v in ctx.numbers)
    line = f"{name:<24} {'PASS' if ok else 'FAIL'} {time.monotonic() - t0:5.1f}s  {nums}"
    if harness.Server.dropped_flags:
        line += f"  [lenient: dropped {' '.join(sorted(set(harness.Server.dropped_flags)))}]"
    print(line, flush=True)
    for f in ctx.failures:
        print(f"    - {f}", flush=True)
    return ok


async def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bin", default=os.environ.get("TETHER_BIN", "target/release/tether"), help="the tether binary")
    p.add_argument("--only", action="append", metavar="NAME", help="run only this case (repeatable)")
    p.add_argument("--debug-bin", help="a debug build too, for the cases where debug and release differ (integer overflow checks)")
    p.add_argument("--lenient", action="store_true", help="drop `tether serve` flags the binary does not know (to measure an older binary)")
    p.add_argument("--list", action="store_true", help="list the cases")
    args = p.parse_args()
    if args.list:
        for name, fn in CASES.items():
            print(f"{name:<24} {(fn.__doc__ or '').strip().splitlines()[0]}")
        return 0
    if not os.access(args.bin, os.X_OK):
        print(f"no executable at {args.bin}", file=sys.stderr)
        return 2
    harness.Server.lenient = args.lenient
    names = args.only or list(CASES)
    unknown = [n for n in names if n not in CASES]
    if unknown:
        print(f"unknown case(s): {', '.join(unknown)}; --list shows them", file=sys.stderr)
        return 2
    t0 = time.monotonic()
    debug_bin = args.debug_bin if args.debug_bin and os.access(args.debug_bin, os.X_OK) else None
    results = [await run_case(n, CASES[n], args.bin, debug_bin) for n in names]
    failed = [n for n, ok in zip(names, results) if not ok]
    print(f"\n{len(results) - len(failed)}/{len(results)} passed in {time.monotonic() - t0:.0f} s" + (f"; failed: {' '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # `run.py | head` ends quietly
    sys.exit(asyncio.run(main()))
