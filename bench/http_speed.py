"""HTTP throughput and latency of the real service, each endpoint as a ratio of its trivial one.

    python bench/http_speed.py [--rounds 5] [--duration 3] [--connections 16 1] [--pin]
        [--tree DIR] [--fresh]

Starts `vae-serve` (the embedded default model, or VAE_MODEL_REPOSITORY's; access log off)
and drives it with wrk (one thread) on 127.0.0.1; with `--pin` the server runs on core 1 and
wrk on core 0. Each round runs every endpoint once, the trivial GET /healthz first, for
`--duration` seconds each, and the trivial endpoint again after each other endpoint. The
table gives medians over the rounds; an endpoint's ratio is the median over its runs of its
req/s over the mean of the trivial runs just before and after it, on the same server. Server
CPU per request comes from /proc/<pid>/stat around each wrk run.

A server process keeps its speed for its whole life, and here two processes running the same
code have differed by 23% (docs/benchmarks.md). With `--fresh` every round starts new
server processes, so that the medians are over processes as well as over time.

With `--tree DIR` a second server runs the `service/` package of DIR (say, the last commit:
`git archive HEAD service | tar -x -C DIR`), measured in the same rounds, for before/after.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import io
import json
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
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
from PIL import Image

TRIVIAL = Request("GET /healthz (trivial)", "/healthz", method="GET")


def v2_infer() -> Request:
    """One 28x28 digit's x as binary FP32 to the Open Inference Protocol's vae, probs back as
    binary: what tritonclient sends and asks for by default."""
    x = np.asarray(Image.open(io.BytesIO(digit_png())), dtype=np.float32).reshape(1, 784) / 255
    tensor = {"name": "x", "shape": [1, 784], "datatype": "FP32"}
    tensor["parameters"] = {"binary_data_size": x.nbytes}
    header = json.dumps({"inputs": [tensor], "parameters": {"binary_data_output": True}})
    return Request(
        "POST /v2/models/vae/infer (binary FP32)",
        "/v2/models/vae/infer",
        header.encode() + x.astype("<f4").tobytes(),
        "application/octet-stream",
        headers=(("Inference-Header-Content-Length", str(len(header))),),
    )


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
        v2_infer(),
    ]


Servers = Callable[[], contextlib.AbstractContextManager[dict[str, Server]]]


@dataclass
class Runs:
    """One server's wrk runs per request, and per non-trivial run its bracketed ratio."""

    results: dict[str, list[LoadResult]] = field(default_factory=lambda: defaultdict(list))
    ratios: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))


def measure(
    servers: Servers,
    fresh: bool,
    wrk: Wrk,
    requests: Sequence[Request],
    connections: int,
    rounds: int,
    duration_s: float,
    verbose: bool = False,
) -> dict[str, Runs]:
    """`rounds` rounds of every server in turn, after a 1 s warm-up of each request; with
    `fresh`, each round in new server processes."""
    runs: dict[str, Runs] = defaultdict(Runs)
    with contextlib.ExitStack() as stack:
        running_servers: dict[str, Server] = {}
        for _ in range(rounds):
            if fresh or not running_servers:
                stack.close()
                running_servers = stack.enter_context(servers())
                for server in running_servers.values():
                    for request in requests:
                        wrk.run(server, request, connections, 1)
            for label, server in running_servers.items():
                load = functools.partial(wrk.run, server, connections=connections)
                bracketed_round(load, requests, duration_s, runs[label], label if verbose else "")
    return runs


def bracketed_round(
    load: Callable[..., LoadResult],
    requests: Sequence[Request],
    duration_s: float,
    runs: Runs,
    verbose_label: str,
) -> None:
    """The trivial request (the first) before the others and after each; each run's ratio is
    its req/s over the mean of the two trivial runs around it, since the machine's speed
    drifts within seconds."""

    def run(request: Request) -> LoadResult:
        result: LoadResult = load(request, duration_s=duration_s)
        runs.results[request.name].append(result)
        if verbose_label:
            print(
                f"  {verbose_label} | {request.name} | {result.rps:,.0f} req/s, "
                f"{result.cpu_us:.0f} us/req, p99 {result.p99_ms:.2f} ms",
                flush=True,
            )
        return result

    before = run(requests[0])
    for request in requests[1:]:
        result = run(request)
        after = run(requests[0])
        runs.ratios[request.name].append(2 * result.rps / (before.rps + after.rps))
        before = after


def table(runs: Runs, label: str, connections: int) -> list[str]:
    lines = []
    for name, results in runs.results.items():
        ratio = median(runs.ratios[name]) if name in runs.ratios else 1.0
        lines.append(
            f"| {label} | {name} | {connections} | {median([r.rps for r in results]):,.0f} "
            f"| {ratio:.2f}x | {median([r.p50_ms for r in results]):.2f} "
            f"| {median([r.p99_ms for r in results]):.2f} "
            f"| {median([r.cpu_us for r in results]):.0f} | {sum(r.errors for r in results)} |"
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
    parser.add_argument("--fresh", action="store_true", help="new server processes every round")
    parser.add_argument("--verbose", action="store_true", help="print every wrk run")
    parser.add_argument(
        "--only", nargs="*", default=[], help="endpoints whose names hold one of these words"
    )
    args = parser.parse_args()
    server_cpus, client_cpus = (SERVER_CPU, CLIENT_CPU) if args.pin else (None, None)
    env = dict(item.split("=", 1) for item in args.env)
    print(f"machine: {machine()}")
    print(f"server env: {env or 'defaults'}; pinned: {args.pin}; fresh: {args.fresh}")
    with running(env, server_cpus) as server:
        print(describe_model(server))

    @contextlib.contextmanager
    def servers() -> Iterator[dict[str, Server]]:
        with contextlib.ExitStack() as stack:
            started = {"this checkout": stack.enter_context(running(env, server_cpus))}
            if args.tree:
                command = tree_command(args.tree.resolve())
                started[str(args.tree)] = stack.enter_context(running(env, server_cpus, command))
            yield started

    wrk = Wrk(client_cpus)
    lines = list(HEADER)
    try:
        for connections in args.connections:
            results = measure(
                servers,
                args.fresh,
                wrk,
                [r for r in endpoints() if r is TRIVIAL or _chosen(r.name, args.only)],
                connections,
                args.rounds,
                args.duration,
                args.verbose,
            )
            for label, server_runs in results.items():
                lines += table(server_runs, label, connections)
            print("\n".join(lines), flush=True)  # so far, in case a later block fails
    finally:
        wrk.close()


def _chosen(name: str, words: list[str]) -> bool:
    return not words or any(word in name for word in words)


if __name__ == "__main__":
    main()
