"""What vae-serve's garbage-collector settings buy: as shipped vs Python's defaults.

    python bench/gc_effect.py [--rounds 4] [--duration 3] [--connections 16]

`vae-serve` freezes everything built before it serves (gc.freeze) and raises the collection
thresholds (service.main.GC_THRESHOLDS). This starts four servers side by side: the shipped
one, one with each setting alone (the other's call made a no-op), and one with both no-ops
(Python's defaults); it drives each in turn with wrk (POST /v1/reconstruct of a 28x28 PNG),
and prints medians over the rounds with the collections each server made (from gc.callbacks,
reported at shutdown).
"""

from __future__ import annotations

import argparse
import contextlib
import re
import sys

from harness import (
    LoadResult,
    Request,
    Server,
    Wrk,
    describe_model,
    digit_png,
    machine,
    median,
    running,
)

# Runs service.main.main() with collection timings reported at exit; DEFAULTS also undoes
# vae-serve's tuning.
TIMED = """
import contextlib, gc, time
import service.http.app
spent = {0: [], 1: [], 2: []}
began = [0.0]
def timed(phase, info):
    if phase == "start":
        began[0] = time.perf_counter()
    else:
        spent[info["generation"]].append(time.perf_counter() - began[0])
gc.callbacks.append(timed)
served = service.http.app.lifespan
@contextlib.asynccontextmanager
async def lifespan(app):  # uvicorn re-raises SIGTERM after shutdown, so no atexit: report here
    async with served(app):
        yield
    for g, times in spent.items():
        print(f"gc gen{g}: {len(times)} collections, max {max(times, default=0) * 1e3:.1f} ms, "
              f"total {sum(times) * 1e3:.0f} ms", flush=True)
service.http.app.lifespan = lifespan
"""
NO_FREEZE = "import gc; gc.freeze = lambda: None\n"
NO_THRESHOLDS = "import gc; gc.set_threshold = lambda *a: None\n"
MAIN = "from service.main import main; main()\n"


def report(server: Server) -> str:
    server.process.terminate()
    server.process.wait()
    return "; ".join(re.findall(r"^gc (gen\d: .*)$", server.log_tail(), re.MULTILINE))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--duration", type=int, default=3, help="seconds per wrk run")
    parser.add_argument("--connections", type=int, default=16)
    args = parser.parse_args()
    print(f"machine: {machine()}")
    variants = {
        "as shipped (freeze + thresholds)": TIMED + MAIN,
        "thresholds only (no freeze)": TIMED + NO_FREEZE + MAIN,
        "freeze only (default thresholds)": TIMED + NO_THRESHOLDS + MAIN,
        "Python's defaults": TIMED + NO_FREEZE + NO_THRESHOLDS + MAIN,
    }
    request = Request("reconstruct", "/v1/reconstruct", digit_png())
    wrk = Wrk(None)
    results: dict[str, list[LoadResult]] = {name: [] for name in variants}
    collections = {}
    with contextlib.ExitStack() as stack:
        servers = {
            name: stack.enter_context(running(command=[sys.executable, "-c", code]))
            for name, code in variants.items()
        }
        print(describe_model(next(iter(servers.values()))))
        for server in servers.values():
            wrk.run(server, request, args.connections, 1)
        for _ in range(args.rounds):
            for name, server in servers.items():
                results[name].append(wrk.run(server, request, args.connections, args.duration))
        collections = {name: report(server) for name, server in servers.items()}
    wrk.close()
    print(
        f"| GC settings | req/s at c={args.connections} | p50 ms | p99 ms | server CPU us/req "
        "| collections during the run |"
    )
    print("| --- | --- | --- | --- | --- | --- |")
    for name, runs in results.items():
        print(
            f"| {name} | {median([r.rps for r in runs]):,.0f} "
            f"| {median([r.p50_ms for r in runs]):.2f} | {median([r.p99_ms for r in runs]):.2f} "
            f"| {median([r.cpu_us for r in runs]):.0f} | {collections[name]} |"
        )


if __name__ == "__main__":
    main()
