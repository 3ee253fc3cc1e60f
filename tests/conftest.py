"""Fixtures shared by the training and service tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.mnist_files import write_mnist


@pytest.fixture
def mnist_dir(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A directory with tiny synthetic train files (5,200 images) and their checksums."""
    directory = tmp_path / "mnist"
    return directory, write_mnist(directory)
