"""HTTP throughput and latency of the real service, each endpoint as a ratio of its trivial one.

    python bench/http_speed.py [--rounds 5] [--duration 3] [--connections 16 1] [--pin]
        [--tree DIR]

Starts `vae-serve` (the embedded default model, or VAE_MODEL_REPOSITORY's; access log off)
and drives it with wrk (one thread) on 127.0.0.1; with `--pin` the server runs on core 1 and
wrk on core 0. Each round runs every endpoint once, the trivial GET /healthz first, for
`--duration` seconds each; the table gives medians over the rounds and each endpoint's req/s
as a ratio of the trivial endpoint's (ratio of medians). Server CPU per request comes from
/proc/<pid>/stat around each wrk run.

With `--tree DIR` a second server runs the `service/` package of DIR (say, the last commit:
`git archive HEAD service | tar -x -C DIR`), measured in the same rounds, for before/after.
"""

from __future__ import annotations

import argparse
import contextlib
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

from harness import (
    CLIENT_CPU,
    SERVER_CPU,
    LoadResult,
    Request,
    Server,
    Wrk,
    describe_model,
    digit_png,
    machine,
    median,
    multipart,
    running,
    tree_command,
)

TRIVIAL = Request("GET /healthz (trivial)", "/healthz", method="GET")


def endpoints() -> list[Request]:
    png = digit_png()
    form, form_type = multipart([png])
    return [
        TRIVIAL,
        Request("POST /v1/reconstruct (PNG -> PNG)", "/v1/reconstruct", png),
        Request("POST /v1/reconstruct?preprocess=none", "/v1/reconstruct?preprocess=none", png),
        Request("POST /v1/reconstruct (multipart, 1 file)", "/v1/reconstruct", form, form_type),
        Request("POST /v1/encode (PNG -> JSON)", "/v1/encode", png),
        Request("GET /v1/sample?n=64 (PNG grid)", "/v1/sample?n=64", method="GET"),
    ]


def measure(
    servers: dict[str, Server],
    wrk: Wrk,
    requests: Sequence[Request],
    connections: int,
    rounds: int,
    duration_s: float,
) -> dict[str, dict[str, list[LoadResult]]]:
    """`rounds` rounds of every server and request in turn (trivial first), after a 1 s
    warm-up of each."""
    for server in servers.values():
        for request in requests:
            wrk.run(server, request, connections, 1)
    results: dict[str, dict[str, list[LoadResult]]] = defaultdict(lambda: defaultdict(list))
    for _ in range(rounds):
        for label, server in servers.items():
            for request in requests:
                run = wrk.run(server, request, connections, duration_s)
                results[label][request.name].append(run)
    return results


def table(
    results: dict[str, list[LoadResult]], label: str, connections: int, trivial: str
) -> list[str]:
    base = median([r.rps for r in results[trivial]]) or float("nan")
    lines = []
    for name, runs in results.items():
        rps = median([r.rps for r in runs])
        lines.append(
            f"| {label} | {name} | {connections} | {rps:,.0f} | {rps / base:.2f}x "
            f"| {median([r.p50_ms for r in runs]):.2f} | {median([r.p99_ms for r in runs]):.2f} "
            f"| {median([r.cpu_us for r in runs]):.0f} | {sum(r.errors for r in runs)} |"
        )
    return lines


HEADER = [
    "| server | endpoint | connections | req/s (median) | x trivial | p50 ms | p99 ms "
    "| server CPU us/req | errors |",
    "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=int, default=3, help="seconds per wrk run")
    parser.add_argument("--connections", type=int, nargs="+", default=[16, 1])
    parser.add_argument(
        "--pin", action="store_true", help="server on core 1, wrk on core 0 (taskset)"
    )
    parser.add_argument("--env", nargs="*", default=[], help="extra VAE_*=value for the server")
    parser.add_argument("--tree", type=Path, help="also serve the service/ package of this tree")
    args = parser.parse_args()
    server_cpus, client_cpus = (SERVER_CPU, CLIENT_CPU) if args.pin else (None, None)
    env = dict(item.split("=", 1) for item in args.env)
    print(f"machine: {machine()}")
    print(f"server env: {env or 'defaults'}; pinned: {args.pin}")
    wrk = Wrk(client_cpus)
    lines = list(HEADER)
    try:
        with contextlib.ExitStack() as stack:
            servers = {"this checkout": stack.enter_context(running(env, server_cpus))}
            print(describe_model(servers["this checkout"]))
            if args.tree:
                command = tree_command(args.tree.resolve())
                servers[str(args.tree)] = stack.enter_context(running(env, server_cpus, command))
            for connections in args.connections:
                results = measure(
                    servers, wrk, endpoints(), connections, args.rounds, args.duration
                )
                for label, by_request in results.items():
                    lines += table(by_request, label, connections, TRIVIAL.name)
                print("\n".join(lines), flush=True)  # so far, in case a later block fails
    finally:
        wrk.close()


if __name__ == "__main__":
    main()
