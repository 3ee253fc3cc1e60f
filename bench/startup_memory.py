"""Start-up time to ready, idle RSS, and RSS growth over 100k requests, of the real service.

    python bench/startup_memory.py [--starts 7] [--requests 100000]

Start-up: spawn `vae-serve` and poll /readyz every 5 ms until the first 200 (the embedded
seed model loaded and validated), `--starts` times; median, min and max. Memory: VmRSS from
/proc/<pid>/status once ready and idle, after a warm-up of every endpoint, and then every
~10% of `--requests` reconstruct requests driven by wrk (c=16) until the total is reached.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from harness import (
    CLIENT_CPU,
    SERVER_CPU,
    Request,
    Server,
    Wrk,
    describe_model,
    digit_png,
    machine,
    running,
)
from harness import start_server as spawn

SETTLE_S = 1.0  # after ready, before reading the idle RSS


def start_up(starts: int) -> list[str]:
    times, rss = [], []
    for _ in range(starts):
        server = spawn(poll_s=0.005)
        try:
            times.append(server.ready_s)
            time.sleep(SETTLE_S)
            rss.append(server.rss_mb())
        finally:
            server.stop()
    return [
        "| measure | median | min | max |",
        "| --- | --- | --- | --- |",
        f"| spawn to first 200 on /readyz, s ({starts} starts) | {statistics.median(times):.2f} "
        f"| {min(times):.2f} | {max(times):.2f} |",
        f"| RSS idle after ready, MB | {statistics.median(rss):.1f} | {min(rss):.1f} "
        f"| {max(rss):.1f} |",
    ]


def torch_loaded(server: Server) -> bool:
    maps = Path(f"/proc/{server.process.pid}/maps").read_text()
    return "libtorch" in maps


def growth(total: int, pin: bool) -> list[str]:
    png = digit_png()
    reconstruct = Request("reconstruct", "/v1/reconstruct", png)
    warm = [
        reconstruct,
        Request("encode", "/v1/encode", png),
        Request("sample", "/v1/sample?n=64", method="GET"),
        Request("healthz", "/healthz", method="GET"),
    ]
    wrk = Wrk(CLIENT_CPU if pin else None)
    lines = ["| point | requests so far | RSS MB | vs after warm-up |", "| --- | --- | --- | --- |"]
    try:
        with running(cpus=SERVER_CPU if pin else None) as server:
            print(describe_model(server))
            time.sleep(SETTLE_S)
            lines.append(f"| idle after ready | 0 | {server.rss_mb():.1f} | |")
            done = sum(wrk.run(server, r, 16, 2).requests for r in warm)
            base = server.rss_mb()
            lines.append(f"| after warm-up (every endpoint, 2 s each) | {done:,} | {base:.1f} | |")
            step, count, mark = total // 10, 0, total // 10
            while count < total:
                count += wrk.run(server, reconstruct, 16, 2).requests
                if count >= mark or count >= total:
                    rss = server.rss_mb()
                    lines.append(
                        f"| reconstruct | {count:,} | {rss:.1f} | {(rss / base - 1) * 100:+.1f}% |"
                    )
                    mark += step
            lines.append(f"\ntorch mapped into the server process: {torch_loaded(server)}")
    finally:
        wrk.close()
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--starts", type=int, default=7)
    parser.add_argument("--requests", type=int, default=100_000)
    parser.add_argument(
        "--pin", action="store_true", help="server on core 1, wrk on core 0 (taskset)"
    )
    args = parser.parse_args()
    print(f"machine: {machine()}\n")
    print("\n".join(start_up(args.starts)))
    print()
    print("\n".join(growth(args.requests, args.pin)))


if __name__ == "__main__":
    main()
