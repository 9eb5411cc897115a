"""`cargo xtask bench api`'s SDK half: the official e2b Python SDK against
the agent the bench started (E2B_API_URL, E2B_SANDBOX_URL, E2B_API_KEY).
Prints one JSON line: milliseconds per operation, p50/p95/min/max."""

import json
import sys
import time

from e2b import Sandbox


def stats(samples):
    ms = sorted(s * 1000.0 for s in samples)

    def pick(q):
        return round(ms[min(round((len(ms) - 1) * q), len(ms) - 1)], 1)

    return {"p50": pick(0.5), "p95": pick(0.95), "min": pick(0.0), "max": pick(1.0)}


def timed(fn):
    start = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - start


def main():
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 10
    out = {k: [] for k in ("create", "first_run", "run", "pause", "connect", "run_after_connect", "kill")}
    for _ in range(runs):
        sbx, took = timed(lambda: Sandbox.create(timeout=600))
        out["create"].append(took)
        try:
            out["first_run"].append(timed(lambda: sbx.commands.run("echo hi"))[1])
            out["run"].append(timed(lambda: sbx.commands.run("echo hi"))[1])
            out["pause"].append(timed(sbx.pause)[1])
            sbx, took = timed(lambda: Sandbox.connect(sbx.sandbox_id))
            out["connect"].append(took)
            out["run_after_connect"].append(timed(lambda: sbx.commands.run("echo hi"))[1])
        finally:
            out["kill"].append(timed(sbx.kill)[1])
    print(json.dumps({k: stats(v) for k, v in out.items() if v}))


if __name__ == "__main__":
    main()
