"""Which threading model serves small requests best: inline, threadpool, thread, batcher.

    python bench/threading_model.py [--rounds 5] [--duration 3] [--pin]
        [--variants inline threadpool thread batcher:32:0 batcher:32:0/ort2 ...]

Starts one `vae-serve` per variant side by side, all the shipped code, configured by
settings (threadpool also patches the inline rule off, as a plain `def` handler would be):

- inline: VAE_BATCH_MAX_SIZE=0, a small job runs on the event loop;
- threadpool: VAE_BATCH_MAX_SIZE=0 and every job hops to the worker threads;
- thread: VAE_BATCH_MAX_SIZE=1, a small image job goes whole to the inference thread;
- batcher:N:D: VAE_BATCH_MAX_SIZE=N, VAE_BATCH_MAX_DELAY_MS=D, the inference thread
  micro-batches up to N requests per model run;
- a `/ort2` suffix adds VAE_ORT_INTRA_OP_THREADS=2.

Round after round it drives each server in turn with wrk: POST /v1/reconstruct (a 28x28
PNG) at 1, 16 and 64 connections, POST /v1/encode at 16 and GET /v1/sample?n=64 at 16. The
table gives medians over the rounds, each variant's req/s as a ratio of the first variant's,
and the mean batch the inference thread ran (from /metrics).

The batcher rule (the performance issue): keep one only if it raises throughput at c=64 by
>= 1.2x without raising p99 at c=1 by more than 1 ms.
"""

from __future__ import annotations

import argparse
import contextlib
import re
import sys
import urllib.request
from collections import defaultdict

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
    running,
)

NO_INLINE = (
    "import service.inference.executor as offload; offload.fits_event_loop = lambda work: False; "
    "from service.main import main; main()"
)


def variant_server(spec: str) -> tuple[list[str] | None, dict[str, str]]:
    """The command (None: vae-serve) and settings of a variant spec (see the docstring)."""
    name, _, suffix = spec.partition("/")
    env = {"VAE_ORT_INTRA_OP_THREADS": "2"} if suffix == "ort2" else {}
    kind, *params = name.split(":")
    if kind == "batcher":
        size, delay = params
        return None, {**env, "VAE_BATCH_MAX_SIZE": size, "VAE_BATCH_MAX_DELAY_MS": delay}
    env["VAE_BATCH_MAX_SIZE"] = "1" if kind == "thread" else "0"
    if kind == "threadpool":
        return [sys.executable, "-c", NO_INLINE], env
    if kind not in ("inline", "thread"):
        sys.exit(f"unknown variant {spec!r}")
    return None, env


def batch_counts(server: Server) -> tuple[float, float]:
    """(sum, count) of vae_inference_batch_size so far."""
    with urllib.request.urlopen(server.url + "/metrics", timeout=5) as response:
        text = response.read().decode()
    found = dict(re.findall(r"^vae_inference_batch_size_(sum|count) (\S+)$", text, re.MULTILINE))
    return float(found.get("sum", 0)), float(found.get("count", 0))


def loads() -> list[tuple[Request, int]]:
    png = digit_png()
    reconstruct = Request("reconstruct", "/v1/reconstruct", png)
    encode = Request("encode", "/v1/encode", png)
    sample = Request("sample n=64", "/v1/sample?n=64", method="GET")
    return [(reconstruct, 1), (reconstruct, 16), (reconstruct, 64), (encode, 16), (sample, 16)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=int, default=3, help="seconds per wrk run")
    parser.add_argument(
        "--pin", action="store_true", help="server on core 1, wrk on core 0 (taskset)"
    )
    parser.add_argument(
        "--variants",
        nargs="+",
        default=[
            "inline",
            "threadpool",
            "thread",
            "batcher:8:0",
            "batcher:32:0",
            "batcher:32:1",
            "batcher:32:0/ort2",
        ],
    )
    args = parser.parse_args()
    server_cpus, client_cpus = (SERVER_CPU, CLIENT_CPU) if args.pin else (None, None)
    print(f"machine: {machine()}; pinned: {args.pin}")
    wrk = Wrk(client_cpus)
    results: dict[tuple[str, str, int], list[LoadResult]] = defaultdict(list)
    batches: dict[tuple[str, str, int], list[float]] = defaultdict(list)
    with contextlib.ExitStack() as stack:
        servers: dict[str, Server] = {}
        for spec in args.variants:
            command, env = variant_server(spec)
            servers[spec] = stack.enter_context(running(env, server_cpus, command))
        print(describe_model(next(iter(servers.values()))))
        for server in servers.values():  # warm-up
            for request, connections in loads():
                wrk.run(server, request, connections, 1)
        for _ in range(args.rounds):
            for spec, server in servers.items():
                for request, connections in loads():
                    key = (spec, request.name, connections)
                    before = batch_counts(server)
                    results[key].append(wrk.run(server, request, connections, args.duration))
                    after = batch_counts(server)
                    if after[1] > before[1] and request.name != "sample n=64":  # not batched
                        batches[key].append((after[0] - before[0]) / (after[1] - before[1]))
    wrk.close()
    print_table(results, batches, args.variants)


def print_table(
    results: dict[tuple[str, str, int], list[LoadResult]],
    batches: dict[tuple[str, str, int], list[float]],
    variants: list[str],
) -> None:
    print(
        "| variant | load | connections | req/s (median) | x first variant | p50 ms | p99 ms "
        "| server CPU us/req | mean batch |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for request, connections in loads():
        base = median([r.rps for r in results[(variants[0], request.name, connections)]])
        for spec in variants:
            runs = results[(spec, request.name, connections)]
            rps = median([r.rps for r in runs])
            errors = sum(r.errors for r in runs)
            key = (spec, request.name, connections)
            batch = f"{median(batches[key]):.1f}" if batches[key] else "-"
            print(
                f"| {spec} | {request.name} | {connections} | {rps:,.0f} | {rps / base:.2f}x "
                f"| {median([r.p50_ms for r in runs]):.2f} "
                f"| {median([r.p99_ms for r in runs]):.2f} "
                f"| {median([r.cpu_us for r in runs]):.0f}{' (errors!)' if errors else ''} "
                f"| {batch} |"
            )


if __name__ == "__main__":
    main()
