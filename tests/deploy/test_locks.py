"""The images' locks agree with pyproject.toml: every pin of the serve extra (and the base
dependencies) is in requirements/serve.lock at the same version, every pin of the train extra
but torch in requirements/train.lock, torch's in requirements/torch.txt, the build backend in
requirements/build.lock; every locked package has a sha256 hash; no CUDA package is locked.
`make lock` refreshes them."""

from __future__ import annotations

import re
import tomllib

import pytest

from tests.lockfile import LOCKS, disagreements, parse_lock, read_lock, requirement_name

PROJECT = tomllib.loads((LOCKS.parent / "pyproject.toml").read_text())


def pins(extra: str) -> dict[str, str]:
    """name -> version of the project's base dependencies plus an extra's, torch aside."""
    project = PROJECT["project"]
    out = {}
    for req in project["dependencies"] + project["optional-dependencies"][extra]:
        name, sep, version = req.partition("==")
        assert sep, f"not pinned with ==: {req}"
        out[requirement_name(name)] = version.strip()
    return out


@pytest.mark.parametrize("extra", ["serve", "train"])
def test_lock_holds_every_pin_of_its_extra(extra: str) -> None:
    expected = {k: v for k, v in pins(extra).items() if k != "torch"}
    wrong = disagreements(expected, read_lock(LOCKS / f"{extra}.lock"))
    assert not wrong, f"pyproject.toml vs {extra}.lock (pinned, locked): {wrong}; run `make lock`"


def test_a_changed_pin_is_a_disagreement() -> None:
    """The comparison above can fail: a lock edited to another fastapi disagrees."""
    text = (LOCKS / "serve.lock").read_text()
    edited = re.sub(r"^fastapi==\S+", "fastapi==0.1.0", text, count=1, flags=re.MULTILINE)
    assert disagreements(pins("serve"), parse_lock(edited)) == {
        "fastapi": (pins("serve")["fastapi"], "0.1.0")
    }
    with pytest.raises(ValueError, match="no hash"):
        parse_lock("numpy==2.4.6\n    # via vae-mnist\n")


def test_torch_is_pinned_alone_and_by_version() -> None:
    text = (LOCKS / "torch.txt").read_text()
    lines = [line for line in text.splitlines() if line and not line.startswith("#")]
    assert lines == [f"torch=={pins('train')['torch']}"], "run `make lock`"
    assert "torch" not in read_lock(LOCKS / "train.lock")
    assert "torch" not in read_lock(LOCKS / "serve.lock")


@pytest.mark.parametrize("name", ["serve", "train", "build"])
def test_lock_is_hashed_and_has_no_cuda_package(name: str) -> None:
    lock = read_lock(LOCKS / f"{name}.lock")  # raises on an entry without a hash
    assert len(lock) >= 2
    assert not [n for n in lock if n.startswith(("nvidia-", "cuda-"))], name


def test_build_lock_holds_the_build_backend() -> None:
    lock = read_lock(LOCKS / "build.lock")
    for req in PROJECT["build-system"]["requires"]:
        name = requirement_name(re.split(r"[<>=!~ ;]", req, maxsplit=1)[0])
        assert name in lock, f"{name} (build-system.requires) is not in build.lock"
