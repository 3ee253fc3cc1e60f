"""Scale-out on one host: VAE_WORKERS=2 against 1, and the balancer's cost (nginx against direct).

    python bench/scale_speed.py [--rounds 5] [--duration 5] [--connections 16] [--access-log]

Three variants (four with --access-log), measured in the same rounds (interleaved, the
order rotated every round), each for `--duration` seconds of wrk (one thread, unpinned: it
shares the cores with the servers) posting one 28x28 digit PNG to /v1/reconstruct:

- `1 worker`: `vae-serve` with VAE_WORKERS=1, direct;
- `2 workers`: another `vae-serve` with VAE_WORKERS=2, direct;
- `1 worker via nginx`: the first server behind the host's nginx running the repository's
  balancer configuration (deploy/nginx/nginx.conf) with its upstream pointed at that server
  and its files moved to a temporary directory; everything else as shipped (least_conn,
  keepalive, retries, access log on);
- with `--access-log`, `1 worker, access log`: a third `vae-serve` (VAE_WORKERS=1) at
  VAE_LOG_LEVEL=info with VAE_ACCESS_LOG=true, the default a user gets: one access line per
  request (to a file, as a container's log driver would take it).

The table gives medians over the rounds; ratios are medians of the per-round ratios. CPU is
per request: the servers' and nginx's together, nginx's alone (from /proc), and wrk's own
(getrusage of children).
The other servers log at warning (no access log), as every serving benchmark here.
"""

from __future__ import annotations

import argparse
import resource
import shutil
import sys
import tempfile
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from harness import (
    ROOT,
    LoadResult,
    Request,
    Server,
    Wrk,
    digit_png,
    free_port,
    machine,
    median,
    spawn,
    start_server,
    wait_ready,
)

NGINX_CONF = ROOT / "deploy" / "nginx" / "nginx.conf"
RECONSTRUCT = Request("POST /v1/reconstruct (PNG -> PNG)", "/v1/reconstruct", digit_png())


@dataclass
class Variant:
    name: str
    target: Server  # what wrk talks to
    involved: list[Server]  # every process that works for a request (CPU is theirs)
    proxy: Server | None = None  # nginx, whose own CPU is also given apart


def nginx_config(upstream_port: int, listen_port: int, workdir: Path) -> str:
    """The balancer's configuration with its upstream at 127.0.0.1:`upstream_port`, listening
    on 127.0.0.1:`listen_port`, writing under `workdir` (the image writes to /tmp)."""
    text = NGINX_CONF.read_text()
    for old, new in (
        ("server api:8000 ", f"server 127.0.0.1:{upstream_port} "),
        ("listen 8000;", f"listen 127.0.0.1:{listen_port};"),
    ):
        if text.count(old) != 1:
            sys.exit(f"{NGINX_CONF} no longer has one {old!r}: update {Path(__file__).name}")
        text = text.replace(old, new)
    return text.replace("/tmp/", f"{workdir}/")


def start_nginx(upstream: Server, workdir: Path) -> Server:
    binary = shutil.which("nginx") or "/usr/sbin/nginx"
    if not Path(binary).exists():
        sys.exit("nginx not found: install it (Debian/Ubuntu: apt-get install nginx-light)")
    port = free_port()
    conf = workdir / "nginx.conf"
    conf.write_text(nginx_config(upstream.port, port, workdir))
    server = spawn([binary, "-e", "stderr", "-c", str(conf)], {}, port)
    wait_ready(server, "/readyz", timeout_s=30)
    return server


def children_cpu_seconds() -> float:
    """CPU of this process's waited-for children: wrk's runs (the servers are reaped last)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def measure(wrk: Wrk, variant: Variant, connections: int, duration: float) -> dict[str, float]:
    cpu_before = sum(s.cpu_seconds() for s in variant.involved)
    proxy_before = variant.proxy.cpu_seconds() if variant.proxy else 0.0
    wrk_before = children_cpu_seconds()
    result: LoadResult = wrk.run(variant.target, RECONSTRUCT, connections, duration)
    wrk_cpu = children_cpu_seconds() - wrk_before
    cpu = sum(s.cpu_seconds() for s in variant.involved) - cpu_before
    proxy_cpu = variant.proxy.cpu_seconds() - proxy_before if variant.proxy else 0.0
    requests = max(result.requests, 1)
    return {
        "rps": result.rps,
        "p50": result.p50_ms,
        "p99": result.p99_ms,
        "cpu_us": cpu / requests * 1e6,
        "nginx_us": proxy_cpu / requests * 1e6,
        "wrk_us": wrk_cpu / requests * 1e6,
        "errors": result.errors,
    }


def report(figures: dict[str, list[dict[str, float]]], names: list[str]) -> None:
    print(
        "| variant | req/s | p50 ms | p99 ms | servers + nginx CPU us/req | of which nginx "
        "| wrk CPU us/req | errors |\n| --- | --- | --- | --- | --- | --- | --- | --- |"
    )
    for name in names:
        runs = figures[name]

        def med(key: str, runs: list[dict[str, float]] = runs) -> float:
            return median([r[key] for r in runs])

        errors = sum(int(r["errors"]) for r in runs)
        print(
            f"| {name} | {med('rps'):.0f} | {med('p50'):.2f} | {med('p99'):.2f} "
            f"| {med('cpu_us'):.0f} | {med('nginx_us'):.0f} | {med('wrk_us'):.0f} | {errors} |"
        )
    one, two, via = (figures[n] for n in names[:3])

    def ratio(a: list[dict[str, float]], b: list[dict[str, float]], key: str) -> float:
        return median([x[key] / y[key] for x, y in zip(a, b, strict=True)])

    def diff(a: list[dict[str, float]], b: list[dict[str, float]], key: str) -> float:
        return median([x[key] - y[key] for x, y in zip(a, b, strict=True)])

    print(
        f"\n2 workers / 1 worker: req/s x{ratio(two, one, 'rps'):.2f}, "
        f"p99 x{ratio(two, one, 'p99'):.2f}"
    )
    print(
        f"via nginx / direct (1 worker): req/s x{ratio(via, one, 'rps'):.2f}, "
        f"p50 {diff(via, one, 'p50'):+.2f} ms, p99 {diff(via, one, 'p99'):+.2f} ms, "
        f"CPU {diff(via, one, 'cpu_us'):+.0f} us/request in all, nginx's own "
        f"{median([r['nginx_us'] for r in via]):.0f}"
    )
    if len(names) > 3:
        logged = figures[names[3]]
        print(
            f"access log / none (1 worker): req/s x{ratio(logged, one, 'rps'):.2f}, "
            f"p99 {diff(logged, one, 'p99'):+.2f} ms, "
            f"CPU {diff(logged, one, 'cpu_us'):+.0f} us/request"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per wrk run")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument(
        "--access-log", action="store_true", help="also a server with the access log on"
    )
    args = parser.parse_args()
    print(machine())
    print(
        f"{args.rounds} rounds x {args.duration:g} s per variant, wrk -t1 "
        f"-c{args.connections}, {RECONSTRUCT.name}\n"
    )
    wrk = Wrk(cpus=None)
    workdir = Path(tempfile.mkdtemp(prefix="vae-bench-nginx-"))
    servers: list[Server] = []
    try:
        one = start_server({"VAE_WORKERS": "1"})
        servers.append(one)
        two = start_server({"VAE_WORKERS": "2"})
        servers.append(two)
        nginx = start_nginx(one, workdir)
        servers.append(nginx)
        variants = [
            Variant("1 worker", one, [one]),
            Variant("2 workers", two, [two]),
            Variant("1 worker via nginx", nginx, [one, nginx], proxy=nginx),
        ]
        if args.access_log:
            logged = start_server(
                {"VAE_WORKERS": "1", "VAE_LOG_LEVEL": "info", "VAE_ACCESS_LOG": "true"}
            )
            servers.append(logged)
            variants.append(Variant("1 worker, access log", logged, [logged]))
        for variant in variants:  # warm-up, not recorded
            measure(wrk, variant, args.connections, 1)
        figures: dict[str, list[dict[str, float]]] = defaultdict(list)
        for r in range(args.rounds):
            for variant in variants[r % len(variants) :] + variants[: r % len(variants)]:
                figures[variant.name].append(measure(wrk, variant, args.connections, args.duration))
        report(figures, [v.name for v in variants])
    finally:
        for server in reversed(servers):
            server.stop()
        wrk.close()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
