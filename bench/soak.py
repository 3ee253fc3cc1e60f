"""Soak: the real server under mixed load while versions are published and broken ones appear.

    python bench/soak.py [--duration 60] [--concurrency 64] [--versions 10] [--max-in-flight 64]

Starts `python -m service.main` (uvicorn, as `vae-serve` runs it) on 127.0.0.1 with a fresh
model repository holding the shipped default model as version 1, and for `--duration` seconds
drives it with `--concurrency` keep-alive clients of mixed traffic (reconstruct 40%, encode
30%, sample 30%). From 10% to 75% of the run it publishes `--versions` new versions (copies of
the default model, by the exporter's protocol: staged in a dot-directory, manifest written last,
renamed into place) and three broken ones: a truncated encoder.onnx (its manifest sha256
updated to match, so that only onnxruntime can refuse it), a manifest whose sha256 does not
match, and a version directory without a manifest. It samples the server's RSS and CPU from
/proc, probes /healthz every 100 ms, and prints a summary; the exit status is 1 when a
criterion of docs/reliability.md fails. A client refused with the documented 503 waits its
Retry-After before the next request. The load generator is a minimal HTTP/1.1 client on
asyncio streams: httpx cost several times the server's own CPU per request.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import io
import json
import os
import random
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parents[1]
# The shipped default model (latent_dim 64): the embedded repository's one version directory.
SEED_MODEL = max(
    (ROOT / "service" / "default_model" / "vae").glob("[0-9]*"), key=lambda p: int(p.name)
)
RSS_LIMIT = 0.10  # allowed RSS growth from the end of warm-up to the end of the run
BODY_VERSION = re.compile(rb'"model_version":\s*(\d+)')
Edit = Callable[[Path, dict[str, Any]], None]


@dataclass(frozen=True)
class Options:
    duration_s: float = 60.0
    concurrency: int = 64
    versions: int = 10  # good versions published during the run (the 3 broken ones come extra)
    max_in_flight: int = 64  # VAE_MAX_IN_FLIGHT: past it, 503 + Retry-After (counted, allowed)
    poll_interval_s: float = 0.2
    warmup_s: float = 0.0  # RSS is compared from here on; 0: 20% of the duration (1.5 s at least)
    seed: int = 0


@dataclass
class Report:
    options: Options
    warmup_s: float
    statuses: Counter[tuple[str, int]] = field(default_factory=Counter)  # (operation, status)
    overloaded: int = 0  # the documented 503 past VAE_MAX_IN_FLIGHT
    failures: Counter[str] = field(default_factory=Counter)  # what went wrong, in words
    versions_seen: Counter[str] = field(default_factory=Counter)  # X-Model-Version
    published: list[int] = field(default_factory=lambda: [1])
    broken: dict[int, str] = field(default_factory=dict)
    final_version: str | None = None  # set once every version is published
    final_seen_at_s: float | None = None  # when final_version was first served
    latency_s: dict[str, list[float]] = field(default_factory=dict)
    healthz_s: list[float] = field(default_factory=list)
    rss_kb: list[tuple[float, int]] = field(default_factory=list)  # (seconds, VmRSS)
    elapsed_s: float = 0.0
    cpu_s: tuple[float, float] = (0.0, 0.0)  # (server, load generator)
    models: dict[str, Any] = field(default_factory=dict)  # GET /v1/models at the end

    @property
    def requests(self) -> int:
        return sum(self.statuses.values())

    def rss_ends(self) -> tuple[float, float]:
        """Median RSS (kB) over the end of warm-up and over the end of the run.

        The window (5% of the run, 1 to 5 s) smooths the few MiB that large responses in
        flight add and remove from one sample to the next.
        """
        window = min(max(0.05 * self.options.duration_s, 1.0), 5.0)
        end = self.rss_kb[-1][0] if self.rss_kb else 0.0
        first = [kb for t, kb in self.rss_kb if self.warmup_s - window <= t <= self.warmup_s]
        last = [kb for t, kb in self.rss_kb if t >= end - window]
        return statistics.median(first or [0]), statistics.median(last or [0])

    def rss_growth(self) -> float:
        first, last = self.rss_ends()
        return last / first - 1 if first else float("nan")

    def problems(self) -> list[str]:
        """Every criterion that failed, in words ([] when the run passed)."""
        valid = {str(v) for v in self.published}
        found = [f"failed requests: {dict(self.failures)}"] if self.failures else []
        found += [f"X-Model-Version {v} is not a valid version" for v in
                  sorted(set(self.versions_seen) - valid)]  # fmt: skip
        found += [f"broken version {v} ({kind}) was served" for v, kind in self.broken.items()
                  if str(v) in self.versions_seen]  # fmt: skip
        if self.final_seen_at_s is None:
            found.append(f"the last version published ({self.final_version}) was never served")
        if not self.rss_growth() < RSS_LIMIT:
            found.append(f"RSS grew {self.rss_growth():.1%} after warm-up")
        return found


def digit_pngs() -> list[bytes]:
    """A clean 28x28 '7', a 200x200 photo of one, and a 280x280 canvas drawing of one."""
    looks = [(28, "L", 255, 0), (200, "L", 0, 255), (280, "RGBA", (20, 20, 160, 255), (0,) * 4)]
    pngs = []
    for size, mode, ink, paper in looks:
        image, s = Image.new(mode, (size, size), paper), size / 28
        stroke = [(7 * s, 6 * s), (21 * s, 6 * s), (11 * s, 23 * s)]
        ImageDraw.Draw(image).line(stroke, fill=ink, width=max(2, int(3 * s)))
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        pngs.append(buffer.getvalue())
    return pngs


def next_request(rng: random.Random, pngs: list[bytes]) -> tuple[str, str, str, bytes, str]:
    """(operation, method, target, body, accept) of one request of the mix."""
    accept = rng.choice(["image/png", "application/json"])
    seed = rng.randrange(2**31)
    roll = rng.random()
    if roll < 0.4:
        target = f"/v1/reconstruct?mode={rng.choice(['mean', 'sample'])}&seed={seed}"
        return "reconstruct", "POST", target, rng.choice(pngs), accept
    if roll < 0.7:
        target = f"/v1/encode?sample={rng.choice(['true', 'false'])}&seed={seed}"
        return "encode", "POST", target, rng.choice(pngs), "application/json"
    n = rng.choice([1, 4, 16, 64])
    return "sample", "GET", f"/v1/sample?n={n}&seed={seed}", b"", accept


class Connection:
    """One keep-alive HTTP/1.1 connection to 127.0.0.1 (responses carry Content-Length)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    async def request(
        self, method: str, target: str, body: bytes = b"", accept: str = "*/*"
    ) -> tuple[int, dict[str, str], bytes]:
        if self.streams is None:
            self.streams = await asyncio.open_connection("127.0.0.1", self.port)
        reader, writer = self.streams
        content_type = "Content-Type: image/png\r\n" if body else ""
        writer.write(
            f"{method} {target} HTTP/1.1\r\nHost: soak\r\nAccept: {accept}\r\n{content_type}"
            f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        await writer.drain()
        head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
        headers = dict(line.lower().split(": ", 1) for line in head[1:] if ": " in line)
        content = await reader.readexactly(int(headers.get("content-length", "0")))
        if headers.get("connection") == "close":
            self.close()
        return int(head[0].split()[1]), headers, content

    def close(self) -> None:
        if self.streams is not None:
            self.streams[1].close()
            self.streams = None


def judge(status: int, headers: dict[str, str], body: bytes) -> str | None:
    """None for a right answer (or the documented overload 503); else what is wrong."""
    if status == 503 and b"/overloaded" in body and "retry-after" in headers:
        return None
    if status != 200:
        return f"status {status}: {body[:100]!r}"
    if headers.get("content-type") == "image/png":
        return None if body.startswith(b"\x89PNG\r\n\x1a\n") else "not a PNG"
    match = BODY_VERSION.search(body[:200])
    found = match.group(1).decode() if match else None
    version = headers.get("x-model-version")
    return None if found == version else f"X-Model-Version {version} but model_version {found}"


# Publishing by the exporter's protocol (docs/model-repository.md), and breaking.


def publish(root: Path, version: int, edit: Edit | None = None) -> None:
    staging = root / "vae" / f".staging-{uuid.uuid4().hex}"
    shutil.copytree(SEED_MODEL, staging)
    manifest = json.loads((staging / "manifest.json").read_text())
    manifest["version"] = version
    if edit is not None:
        edit(staging, manifest)
    temporary = staging / ".manifest.json.tmp"
    with temporary.open("w") as f:
        json.dump(manifest, f)
        f.flush()
        os.fsync(f.fileno())
    temporary.replace(staging / "manifest.json")
    staging.rename(root / "vae" / str(version))


def truncate_encoder(version_dir: Path, manifest: dict[str, Any]) -> None:
    path = version_dir / "encoder.onnx"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    manifest["graphs"]["encoder"]["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()


def wrong_sha256(version_dir: Path, manifest: dict[str, Any]) -> None:
    manifest["graphs"]["decoder"]["sha256"] = "0" * 64


def apply(root: Path, version: int, kind: str | None) -> None:
    """Publish `version`, good (kind None) or broken as `kind` says."""
    if kind == "no manifest":  # an abandoned copy: the files, never the manifest
        (root / "vae" / str(version)).mkdir()
        for name in ("encoder.onnx", "decoder.onnx"):
            shutil.copy(SEED_MODEL / name, root / "vae" / str(version) / name)
        return
    edits: dict[str | None, Edit] = {"truncated ONNX": truncate_encoder, "sha256": wrong_sha256}
    publish(root, version, edits.get(kind))


def schedule(options: Options) -> list[tuple[float, int, str | None]]:
    """(time, version, broken kind or None): evenly from 10% to 75% of the run, last one good."""
    count = options.versions + 3
    broken = {count // 4: "truncated ONNX", count // 2: "sha256", 3 * count // 4: "no manifest"}
    step = 0.65 * options.duration_s / max(count - 1, 1)
    return [(0.1 * options.duration_s + i * step, 2 + i, broken.get(i)) for i in range(count)]


# The server process.


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextlib.contextmanager
def serving(repo: Path, log: Path, **settings: object) -> Iterator[subprocess.Popen[bytes]]:
    """`python -m service.main` serving `repo` (no embedded fallback) with VAE_ `settings`
    (VAE_PORT among them), once ready; killed on the way out if it is still running."""
    port = int(str(settings["port"]))
    env = {k: v for k, v in os.environ.items() if not k.startswith("VAE_")}
    env |= {"VAE_MODEL_REPOSITORY": str(repo), "VAE_FALLBACK_TO_EMBEDDED": "false"}
    env |= {"VAE_LOG_LEVEL": "warning"} | {f"VAE_{k.upper()}": str(v) for k, v in settings.items()}
    with log.open("wb") as out:
        command = [sys.executable, "-m", "service.main"]
        process = subprocess.Popen(command, env=env, cwd=ROOT, stdout=out, stderr=out)
    try:
        deadline = time.monotonic() + 120  # importing onnxruntime on a loaded machine
        while not ready(port):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the server did not become ready: {log.read_text()[-2000:]}")
            time.sleep(0.1)
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=30)


def ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def proc_figures(pid: int) -> tuple[float, int]:
    """(user + system CPU seconds, VmRSS in kB) of a process."""
    stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu = (int(stat[11]) + int(stat[12])) / os.sysconf("SC_CLK_TCK")
    status = Path(f"/proc/{pid}/status").read_text()
    return cpu, int(status.split("VmRSS:")[1].split()[0])


# The run.


async def drive(root: Path, pid: int, port: int, options: Options, report: Report) -> None:
    pngs, stop = digit_pngs(), asyncio.Event()
    start, server_cpu, client_cpu = time.monotonic(), proc_figures(pid)[0], time.process_time()

    async def client(index: int) -> None:
        rng, connection = random.Random(options.seed * 1000 + index), Connection(port)
        while not stop.is_set():
            operation, method, target, body, accept = next_request(rng, pngs)
            sent = time.monotonic()
            try:
                status, headers, content = await asyncio.wait_for(
                    connection.request(method, target, body, accept), timeout=120
                )
            except (OSError, asyncio.IncompleteReadError, TimeoutError) as exc:
                report.failures[f"{operation}: {type(exc).__name__}"] += 1
                connection.close()
                continue
            report.latency_s.setdefault(operation, []).append(time.monotonic() - sent)
            report.statuses[operation, status] += 1
            version = headers.get("x-model-version", "missing")
            report.versions_seen[version] += 1
            if (wrong := judge(status, headers, content)) is not None:
                report.failures[f"{operation}: {wrong}"] += 1
            elif status == 503:
                report.overloaded += 1
                await asyncio.sleep(float(headers["retry-after"]))  # as a polite client does
            elif version == report.final_version and report.final_seen_at_s is None:
                report.final_seen_at_s = time.monotonic() - start
        connection.close()

    async def probe_and_sample() -> None:
        connection, last_rss = Connection(port), 0.0
        while not stop.is_set():
            sent = time.monotonic()
            try:
                status = (await asyncio.wait_for(connection.request("GET", "/healthz"), 60))[0]
            except (OSError, asyncio.IncompleteReadError, TimeoutError) as exc:
                connection.close()
                status = type(exc).__name__
            report.healthz_s.append(time.monotonic() - sent)
            if status != 200:
                report.failures[f"healthz: {status}"] += 1
            if time.monotonic() - last_rss >= 0.25:
                last_rss = time.monotonic()
                report.rss_kb.append((last_rss - start, proc_figures(pid)[1]))
            await asyncio.sleep(0.1)
        connection.close()

    tasks = [asyncio.create_task(client(i)) for i in range(options.concurrency)]
    tasks.append(asyncio.create_task(probe_and_sample()))
    for at, version, kind in schedule(options):
        await asyncio.sleep(max(0.0, start + at - time.monotonic()))
        await asyncio.to_thread(apply, root, version, kind)
        if kind is None:
            report.published.append(version)
        else:
            report.broken[version] = kind
    report.final_version = str(report.published[-1])
    # The whole duration, then on (30 s at most) until the last version has been served.
    deadline = start + options.duration_s
    while time.monotonic() < deadline or (
        report.final_seen_at_s is None and time.monotonic() < deadline + 30
    ):
        await asyncio.sleep(0.05)
    report.rss_kb.append((time.monotonic() - start, proc_figures(pid)[1]))
    stop.set()
    await asyncio.gather(*tasks)
    report.elapsed_s = time.monotonic() - start
    report.cpu_s = (proc_figures(pid)[0] - server_cpu, time.process_time() - client_cpu)
    connection = Connection(port)
    report.models = json.loads((await connection.request("GET", "/v1/models"))[2])
    connection.close()


def run_soak(options: Options, workdir: Path) -> Report:
    """Run one soak in `workdir` (repository and server.log) and return its report."""
    root = workdir / "repository"
    (root / "vae").mkdir(parents=True)
    publish(root, 1)
    report = Report(options, warmup_s=options.warmup_s or max(1.5, 0.2 * options.duration_s))
    port, log = free_port(), workdir / "server.log"
    settings = {"poll_interval_s": options.poll_interval_s, "max_in_flight": options.max_in_flight}
    with serving(root, log, port=port, **settings) as process:
        asyncio.run(drive(root, process.pid, port, options, report))
    return report


def ms(values: list[float], q: int) -> str:
    """The q-th percentile in milliseconds."""
    return f"{statistics.quantiles(values, n=100)[q - 1] * 1e3:.0f}" if len(values) > 1 else "-"


def summary(report: Report) -> str:
    o, (rss_first, rss_last) = report.options, report.rss_ends()
    statuses = {v["version"]: v["status"] for v in report.models.get("versions", [])}
    lines = [
        f"soak: {report.elapsed_s:.1f} s, concurrency {o.concurrency}, VAE_MAX_IN_FLIGHT="
        f"{o.max_in_flight}, poll {o.poll_interval_s} s: {report.requests} requests "
        f"({report.requests / max(report.elapsed_s, 1e-9):.0f}/s); CPU s: server "
        f"{report.cpu_s[0]:.1f}, load generator {report.cpu_s[1]:.1f}; load average "
        + " ".join(f"{x:.1f}" for x in os.getloadavg()),
        "",
        "| operation | requests | 200 | 503 overloaded | failed | p50 ms | p99 ms |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for op in ("reconstruct", "encode", "sample"):
        total = sum(n for (name, _), n in report.statuses.items() if name == op)
        failed = sum(n for what, n in report.failures.items() if what.startswith(op))
        latency = report.latency_s.get(op, [])
        lines.append(
            f"| {op} | {total} | {report.statuses[op, 200]} | {report.statuses[op, 503]} | "
            f"{failed} | {ms(latency, 50)} | {ms(latency, 99)} |"
        )
    health = report.healthz_s
    broken = ", ".join(f"{v} {k}: {statuses.get(v, '?')}" for v, k in report.broken.items())
    seen = sorted(report.versions_seen.items(), key=lambda i: (len(i[0]), i[0]))
    lines += [
        "",
        f"/healthz under load: {len(health)} probes, p50 {ms(health, 50)} ms, "
        f"p99 {ms(health, 99)} ms, max {max(health, default=0) * 1e3:.0f} ms",
        f"published: {report.published}; broken: {broken}",
        f"X-Model-Version seen: {dict(seen)}",
        f"last version ({report.final_version}) first served at "
        f"{report.final_seen_at_s or float('nan'):.1f} s",
        f"RSS (windowed medians): {rss_first / 1024:.1f} MiB at the end of the "
        f"{report.warmup_s:.1f} s warm-up, {rss_last / 1024:.1f} MiB at the end "
        f"({report.rss_growth():+.1%}); peak {max(kb for _, kb in report.rss_kb) / 1024:.1f} MiB",
        f"failures: {dict(report.failures) or 'none'}",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    for option in fields(Options):
        flag = "--" + option.name.removesuffix("_s").replace("_", "-")
        kind = type(option.default)
        parser.add_argument(flag, dest=option.name, type=kind, default=option.default)
    options = Options(**vars(parser.parse_args()))
    with tempfile.TemporaryDirectory(prefix="vae-soak-") as workdir:
        report = run_soak(options, Path(workdir))
    print(summary(report))
    problems = report.problems()
    print("PASS" if not problems else "FAIL:\n  " + "\n  ".join(problems))
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
