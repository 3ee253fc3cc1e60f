"""Never silent for long: progress lines without a bar, through training and evaluation."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.mnist_files import write_mnist
from training.cli import main
from training.config import SMOKE_EVAL_K
from training.progress import Meter


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[dict[str, Any], str]]:
    """One `train --preset tiny --no-progress` run: its summary and its log."""
    tmp = tmp_path_factory.mktemp("tiny")
    write_mnist(tmp / "data")
    lines: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: lines.append(record.getMessage())  # type: ignore[method-assign]
    logger = logging.getLogger("training")
    logger.addHandler(handler)
    try:
        code = main(
            [
                "train",
                "--preset",
                "tiny",
                "--no-progress",
                "--log-seconds",
                "0.001",
                "--allow-unverified-data",
                "--no-download",
                "--data-dir",
                str(tmp / "data"),
                "--no-publish",
                "--run-dir",
                str(tmp / "run"),
            ]
        )
    finally:
        logger.removeHandler(handler)
    assert code == 0
    yield json.loads((tmp / "run" / "summary.json").read_text()), "\n".join(lines)


def test_training_logs_iteration_losses_rate_and_eta(tiny_run: tuple[dict[str, Any], str]) -> None:
    _, log = tiny_run
    line = re.compile(
        r"training: it (\d+)/50 \(\d+%\), loss [\d.]+, recon [\d.]+, kl [\d.]+"
        r"(, val -ELBO [\d.]+)?, [\d.]+ it/s, (ETA \d+ s|done in \d+ s)"
    )
    found = [m for m in map(line.search, log.splitlines()) if m]
    assert len(found) >= 4, log  # a line at each log_every (10) when --log-seconds is tiny
    assert any(m.group(2) for m in found), "validation -ELBO never shown"
    assert found[-1].group(1) == "50" and found[-1].group(3).startswith("done")


def test_evaluation_logs_its_progress(tiny_run: tuple[dict[str, Any], str]) -> None:
    _, log = tiny_run
    assert re.search(
        rf"IWAE bound, k={SMOKE_EVAL_K}, validation: images 5000/5000 \(100%\), [\d.]+ images/s",
        log,
    ), log


def test_the_smoke_preset_evaluates_with_a_small_k(tiny_run: tuple[dict[str, Any], str]) -> None:
    summary, _ = tiny_run
    assert summary["evaluation"]["iwae_k"] == SMOKE_EVAL_K


def test_metrics_and_summary_agree_on_validation_elbo(
    tiny_run: tuple[dict[str, Any], str],
) -> None:
    summary, _ = tiny_run
    rows = Path(summary["run_dir"], "metrics.jsonl").read_text().splitlines()
    last = [r for r in map(json.loads, rows) if r["kind"] == "validation"][-1]
    assert last["iteration"] == summary["iterations"] == 50
    for key in ("neg_elbo", "reconstruction", "kl"):
        assert summary["evaluation"][key] == last[key], key


def test_the_bar_shows_the_figures(capsys: pytest.CaptureFixture[str]) -> None:
    with Meter("training", 10, "it", bar=True) as meter:
        meter.update(5, loss="101.00")
        meter.update(0, **{"val -ELBO": "103.53"})
        meter.update(5)
    err = capsys.readouterr().err
    assert "10/10" in err and "loss=101.00" in err and "val -ELBO=103.53" in err
