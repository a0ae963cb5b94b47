#!/usr/bin/env python3
"""Summarise an Autobahn|Testsuite report directory and fail on FAILED cases.

usage: check.py OUTDIR [--agent NAME] [--expect N] [--elapsed SECONDS] [--strict]

Reads OUTDIR/index.json (agent -> case id -> {behavior, behaviorClose, ...}),
prints counts per behaviour and per top-level section, lists every case whose
`behavior` or `behaviorClose` is FAILED (with the reason from the per-case
report), and exits:

  0  no case FAILED
  1  some case FAILED, or index.json is missing/unreadable/empty, or the agent
     is missing, or fewer cases ran than --expect says (e.g. the peer crashed
     and wstest gave up on the remaining cases)

--strict also fails on the non-fatal close behaviours WRONG CODE, UNCLEAN and
FAILED BY CLIENT (listed as warnings otherwise).
Standard library only.
"""

import argparse
import json
import os
import sys
from collections import Counter, OrderedDict

FAILED = "FAILED"
# behaviorClose values that Autobahn reports but does not count as failures.
WARN_CLOSE = ("WRONG CODE", "UNCLEAN", "FAILED BY CLIENT")
ORDER = ["OK", "NON-STRICT", "INFORMATIONAL", "UNIMPLEMENTED",
         "WRONG CODE", "UNCLEAN", "FAILED BY CLIENT", "FAILED"]


def case_key(case_id):
    out = []
    for part in str(case_id).split("."):
        try:
            out.append((0, int(part)))
        except ValueError:
            out.append((1, part))
    return out


def fmt_counts(counter):
    keys = [k for k in ORDER if k in counter] + sorted(k for k in counter if k not in ORDER)
    return ", ".join("%s %d" % (k, counter[k]) for k in keys)


def fmt_duration(seconds):
    seconds = float(seconds)
    if seconds < 60:
        return "%.1fs" % seconds
    return "%dm%02ds" % (int(seconds) // 60, int(seconds) % 60)


def case_detail(outdir, entry):
    """Description and result strings from the per-case JSON report, if any."""
    name = entry.get("reportfile")
    if not name:
        return None
    try:
        with open(os.path.join(outdir, name)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def one_line(text, limit=160):
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("outdir", help="wstest report directory (holds index.json)")
    ap.add_argument("--agent", help="agent to check (default: every agent in index.json)")
    ap.add_argument("--expect", type=int, help="number of cases that should have run")
    ap.add_argument("--elapsed", type=float, help="wall-clock seconds the run took (printed)")
    ap.add_argument("--strict", action="store_true",
                    help="also fail on WRONG CODE / UNCLEAN / FAILED BY CLIENT")
    args = ap.parse_args(argv)

    index_path = os.path.join(args.outdir, "index.json")
    print("== Autobahn|Testsuite results: %s" % index_path)
    if args.elapsed is not None:
        print("run took %s" % fmt_duration(args.elapsed))
    try:
        with open(index_path) as f:
            index = json.load(f, object_pairs_hook=OrderedDict)
    except FileNotFoundError:
        print("FAIL: %s does not exist: wstest produced no report (did the run finish? "
              "In client mode the client must finish with /updateReports?agent=NAME)" % index_path)
        return 1
    except (OSError, ValueError) as e:
        print("FAIL: cannot read %s: %s" % (index_path, e))
        return 1
    if not isinstance(index, dict):
        print("FAIL: %s is not a JSON object" % index_path)
        return 1

    if args.agent:
        if args.agent not in index:
            print("FAIL: agent %r not in index.json (agents found: %s)"
                  % (args.agent, ", ".join(map(repr, index)) or "none"))
            return 1
        agents = [args.agent]
    else:
        agents = list(index)
        if not agents:
            print("FAIL: index.json has no agents, so no cases ran")
            return 1

    ok = True
    for agent in agents:
        cases = index[agent] or {}
        ids = sorted(cases, key=case_key)
        print("\n-- agent %r: %d cases" % (agent, len(ids)))
        if not ids:
            print("FAIL: no cases were run for agent %r" % agent)
            ok = False
            continue

        behavior = Counter(cases[c].get("behavior") for c in ids)
        behavior_close = Counter(cases[c].get("behaviorClose") for c in ids)
        print("behavior:      %s" % fmt_counts(behavior))
        print("behaviorClose: %s" % fmt_counts(behavior_close))
        total_ms = sum(cases[c].get("duration") or 0 for c in ids)
        print("sum of case durations: %s" % fmt_duration(total_ms / 1000.0))

        sections = OrderedDict()
        for c in ids:
            sections.setdefault(c.split(".")[0], []).append(c)
        print("\nper section:")
        for sec, sec_ids in sections.items():
            cnt = Counter()
            for c in sec_ids:
                e = cases[c]
                if FAILED in (e.get("behavior"), e.get("behaviorClose")):
                    cnt[FAILED] += 1
                else:
                    cnt[e.get("behavior")] += 1
            ms = sum(cases[c].get("duration") or 0 for c in sec_ids)
            print("  %-3s %4d cases  %-8s %s" % (sec, len(sec_ids), fmt_duration(ms / 1000.0), fmt_counts(cnt)))

        failed = [c for c in ids if FAILED in (cases[c].get("behavior"), cases[c].get("behaviorClose"))]
        warned = [c for c in ids if c not in failed and cases[c].get("behaviorClose") in WARN_CLOSE]
        nonstrict = [c for c in ids if cases[c].get("behavior") == "NON-STRICT"]

        if nonstrict:
            print("\nNON-STRICT (allowed): %s" % " ".join(nonstrict))
        if warned:
            print("\n%s close behaviour (%s): %d" % ("FAILING" if args.strict else "non-fatal",
                                                     "/".join(WARN_CLOSE), len(warned)))
            for c in warned:
                e = cases[c]
                d = case_detail(args.outdir, e) or {}
                print("  %-8s behaviorClose=%s remoteCloseCode=%s  %s"
                      % (c, e.get("behaviorClose"), e.get("remoteCloseCode"),
                         one_line(d.get("resultClose", ""))))
            if args.strict:
                ok = False
        if failed:
            ok = False
            print("\nFAILED cases: %d" % len(failed))
            for c in failed:
                e = cases[c]
                d = case_detail(args.outdir, e) or {}
                print("  %-8s behavior=%s behaviorClose=%s remoteCloseCode=%s"
                      % (c, e.get("behavior"), e.get("behaviorClose"), e.get("remoteCloseCode")))
                if d.get("description"):
                    print("           case:   %s" % one_line(d["description"]))
                if e.get("behavior") == FAILED and d.get("result"):
                    print("           result: %s" % one_line(d["result"]))
                if e.get("behaviorClose") == FAILED and d.get("resultClose"):
                    print("           close:  %s" % one_line(d["resultClose"]))
                if e.get("reportfile"):
                    print("           report: %s" % os.path.join(args.outdir, e["reportfile"]))
        if args.expect is not None and len(ids) < args.expect:
            ok = False
            print("\nFAIL: only %d of %d expected cases have results (the peer probably crashed "
                  "or closed the connection; the last case with a result is %s)"
                  % (len(ids), args.expect, ids[-1]))

    print()
    if ok:
        print("PASS: no case FAILED")
        return 0
    print("FAIL: see above")
    return 1


if __name__ == "__main__":
    sys.exit(main())
