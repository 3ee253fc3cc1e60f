"""vae-serve against TorchServe on the same request, side by side: req/s, p50, p99, memory.

    python bench/peers/compare.py [--workers 1 2] [--connections 1 16 64] [--rounds 5]
        [--duration 3] [--warmup 40] [--quick]

Both serve the seed network `make seed-model` trained (vae-serve its published ONNX version in
models-seed/, TorchServe the same checkpoint's weights in eager PyTorch) for one request: a
raw `image/png` body of a 28x28 MNIST digit in, the PNG of its reconstruction out, with no
MNIST-style preprocessing on either side (vae-serve: `?preprocess=none`; TorchServe:
bench/peers/handler.py). Before measuring, both answer the digit and their PNGs' pixels are
compared.

For each worker count N both servers run at once, vae-serve with VAE_WORKERS=N (unset for 1,
its default) and TorchServe with N workers. Each is warmed up with `--warmup` seconds of load
at c=16 (TorchServe's JVM compiles its hot paths for about 30 s: its frontend's CPU per request
fell from 2.8 to 0.65 ms over that time here) and 1 s at each concurrency. Then every round
runs wrk (one thread) against one then the other at each concurrency, the order swapped every
round. The table gives medians over the rounds; its ratios (req/s, and server CPU per request
from /proc over each server's process tree) are medians of the rounds' ratios, each pair
measured seconds apart. Memory is the resident memory summed over each server's process tree
after each run (pages shared between processes count in each). A vae-serve without a
multi-worker mode (one that refuses VAE_WORKERS, or ignores it and runs as one process) is
skipped for N > 1.

`--quick` is a smoke run of a few seconds per side: one worker, c=16, one round of 1 s.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import sys
import tempfile
import time
import urllib.request
from collections import defaultdict
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/, for the shared harness

import peer
import processes
from harness import (
    MNIST_TRAIN,
    LoadResult,
    Request,
    Server,
    ServerFailed,
    Wrk,
    describe_model,
    digit_png,
    machine,
    median,
    running,
)

SIDES = ("vae-serve", "TorchServe")
Sample = tuple[LoadResult, float]  # one wrk run and the server's tree RSS after it, MB


def requests(png: bytes) -> dict[str, Request]:
    return {
        "vae-serve": Request("reconstruct", "/v1/reconstruct?preprocess=none", png),
        "TorchServe": Request("predictions", f"/predictions/{peer.MODEL}", png),
    }


def start_vae(workers: int, stack: contextlib.ExitStack) -> Server | None:
    """vae-serve on models-seed with `workers` workers (VAE_WORKERS, unset for its default
    of 1), or None when it has no multi-worker mode: it refuses VAE_WORKERS, or ignores it
    and runs as one process."""
    env = {"VAE_MODEL_REPOSITORY": str(peer.REPOSITORY)}
    if workers > 1:
        env["VAE_WORKERS"] = str(workers)
    try:
        server = stack.enter_context(running(env))
    except ServerFailed as failure:
        if workers > 1 and "workers" in str(failure).lower():
            print(f"vae-serve refused VAE_WORKERS={workers} (no multi-worker mode yet): skipped")
            return None
        raise
    if has_processes(server, workers):
        return server
    server.stop()
    print(f"vae-serve ignored VAE_WORKERS={workers} (one process: no multi-worker mode): skipped")
    return None


def has_processes(server: Server, count: int, timeout_s: float = 10.0) -> bool:
    """Whether the server's process tree reaches `count` processes (N workers make at least
    N, whatever runs them) within `timeout_s`."""
    deadline = time.perf_counter() + timeout_s
    while len(processes.tree(server.process.pid)) < count:
        if time.perf_counter() > deadline:
            return False
        time.sleep(0.1)
    return True


def answer(server: Server, request: Request) -> np.ndarray:
    """The server's PNG answer to `request`, as gray pixels."""
    post = urllib.request.Request(
        server.url + request.path, request.body, {"Content-Type": request.content_type}
    )
    with urllib.request.urlopen(post, timeout=10) as response:
        return np.asarray(Image.open(io.BytesIO(response.read())).convert("L"), dtype=np.int16)


def check_same(servers: dict[str, Server], by_side: dict[str, Request]) -> None:
    """Exit unless both answer the digit with the same image (within 1 gray level: float
    rounding of onnxruntime against torch)."""
    vae, ts = (answer(servers[side], by_side[side]) for side in SIDES)
    if vae.shape != ts.shape:
        sys.exit(f"vae-serve answers a {vae.shape} image, TorchServe a {ts.shape} one")
    diff = np.abs(vae - ts)
    print(
        f"same request, both answers {vae.shape[1]}x{vae.shape[0]}: max pixel difference "
        f"{diff.max()}, {int((diff > 0).sum())} of {diff.size} pixels differ"
    )
    if diff.max() > 1:
        sys.exit("vae-serve and TorchServe answer differently: not the same model or request")


def check_answers(servers: dict[str, Server], by_side: dict[str, Request]) -> None:
    """Both sides' answers compared; TorchServe's alone checked for its size."""
    if "vae-serve" in servers:
        check_same(servers, by_side)
        return
    shape = answer(servers["TorchServe"], by_side["TorchServe"]).shape
    print(f"TorchServe answers the digit with a {shape[1]}x{shape[0]} image")
    if shape != (28, 28):
        sys.exit("TorchServe's answer is not a 28x28 image")


def measure(
    servers: dict[str, Server],
    by_side: dict[str, Request],
    wrk: Wrk,
    connections: list[int],
    rounds: int,
    duration_s: float,
    warmup_s: float,
) -> dict[tuple[str, int], list[Sample]]:
    """Each side warmed up (`warmup_s` at c=16, then 1 s at each concurrency), then
    `rounds` interleaved rounds."""
    for side, server in servers.items():
        for c, seconds in [(16, warmup_s)] + [(c, 1) for c in connections]:
            wrk.run(server, by_side[side], c, seconds)
    samples: dict[tuple[str, int], list[Sample]] = defaultdict(list)
    for round_number in range(rounds):
        order = list(servers) if round_number % 2 == 0 else list(reversed(servers))
        for c in connections:
            for side in order:
                result = wrk.run(servers[side], by_side[side], c, duration_s)
                samples[side, c].append((result, servers[side].tree_rss_mb()))
    return samples


HEADER = [
    "| workers | c | vae-serve req/s | p50 ms | p99 ms | MB | CPU us/req "
    "| TorchServe req/s | p50 ms | p99 ms | MB | CPU us/req "
    "| req/s: vae-serve / TorchServe | CPU per request: TorchServe / vae-serve | errors |",
    "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
]


def side_cells(samples: list[Sample]) -> list[str]:
    """Medians of one side's runs: req/s, p50, p99, tree RSS, server CPU per request."""
    if not samples:
        return ["skipped", "", "", "", ""]
    results = [result for result, _ in samples]
    return [
        f"{median([r.rps for r in results]):,.0f}",
        f"{median([r.p50_ms for r in results]):.2f}",
        f"{median([r.p99_ms for r in results]):.2f}",
        f"{median([rss for _, rss in samples]):.0f}",
        f"{median([r.cpu_us for r in results]):.0f}",
    ]


def round_ratio(numerators: list[float], denominators: list[float]) -> str:
    """The median over rounds of each round's ratio; empty when a side was skipped."""
    if not numerators or not denominators:
        return ""
    return f"{median([a / b for a, b in zip(numerators, denominators, strict=True)]):.2f}x"


def rows(
    workers: int, samples: dict[tuple[str, int], list[Sample]], c_list: list[int]
) -> list[str]:
    """One table row per concurrency."""
    lines = []
    for c in c_list:
        vae, ts = samples.get(("vae-serve", c), []), samples[("TorchServe", c)]
        speed = round_ratio([r.rps for r, _ in vae], [r.rps for r, _ in ts])
        cost = round_ratio([r.cpu_us for r, _ in ts], [r.cpu_us for r, _ in vae])
        errors = "/".join(str(sum(r.errors for r, _ in side)) for side in (vae, ts))
        cells = [str(workers), str(c), *side_cells(vae), *side_cells(ts), speed, cost, errors]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def compare(workers: int, store: Path, wrk: Wrk, args: argparse.Namespace) -> list[str]:
    """Both servers with `workers` workers each, checked and measured; the table rows."""
    by_side = requests(digit_png())
    with contextlib.ExitStack() as stack:
        servers: dict[str, Server] = {}
        vae = start_vae(workers, stack)
        if vae is not None:
            servers["vae-serve"] = vae
            print(describe_model(vae))
        servers["TorchServe"] = stack.enter_context(peer.running(workers, store))
        check_answers(servers, by_side)
        samples = measure(
            servers, by_side, wrk, args.connections, args.rounds, args.duration, args.warmup
        )
    return rows(workers, samples, args.connections)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--connections", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=int, default=3, help="seconds per wrk run")
    parser.add_argument("--warmup", type=int, default=40, help="seconds of load before rounds")
    parser.add_argument("--quick", action="store_true", help="a smoke run, not for the record")
    args = parser.parse_args()
    if args.quick:
        args.workers, args.connections, args.rounds, args.duration, args.warmup = [1], [16], 1, 1, 1
    peer.require_setup()
    print(f"machine: {machine()}")
    source = "MNIST's first training digit" if MNIST_TRAIN.exists() else "a drawn 7 (no MNIST_DIR)"
    print(f"request: a {len(digit_png())}-byte 28x28 gray PNG, {source}")
    wrk = Wrk(None)
    lines = list(HEADER)
    try:
        with tempfile.TemporaryDirectory(prefix="vae-peers-store-") as store:
            peer.build_archive(Path(store))
            for workers in args.workers:
                lines += compare(workers, Path(store), wrk, args)
                print("\n".join(lines), flush=True)  # so far, in case a later block fails
    finally:
        wrk.close()
    if any(not line.endswith("| 0/0 |") for line in lines[2:]):
        sys.exit("some requests failed (the errors column)")


if __name__ == "__main__":
    main()
