"""Reads the hashed requirement locks of requirements/ (pip-compile --generate-hashes output)."""

from __future__ import annotations

import re
from pathlib import Path

LOCKS = Path(__file__).resolve().parents[1] / "requirements"
# `name==version \` then one `--hash=sha256:...` per line (each but the last ends in `\`).
_ENTRY = re.compile(
    r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)((?:\s*\\\n\s+--hash=sha256:[0-9a-f]{64})*)",
    re.MULTILINE,
)


def requirement_name(name: str) -> str:
    """A distribution name as pip compares them (PEP 503)."""
    return re.sub(r"[-_.]+", "-", name).lower().strip()


def parse_lock(text: str) -> dict[str, str]:
    """name -> version of every entry; an entry without a sha256 hash is an error."""
    entries = {}
    for match in _ENTRY.finditer(text):
        name, version, hashes = match.groups()
        if "--hash=sha256:" not in hashes:
            raise ValueError(f"{name}=={version} has no hash")
        entries[requirement_name(name)] = version
    return entries


def read_lock(path: Path) -> dict[str, str]:
    return parse_lock(path.read_text())


def disagreements(pins: dict[str, str], lock: dict[str, str]) -> dict[str, tuple[str, str | None]]:
    """name -> (pinned, locked) for every pin the lock does not hold at the same version."""
    return {name: (v, lock.get(name)) for name, v in pins.items() if lock.get(name) != v}
