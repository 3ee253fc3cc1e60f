"""A whole run: load data, train, evaluate, export, publish, and write the figures."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from training.config import EVAL_K, TrainConfig
from training.data import (
    DataError,
    DataSource,
    Split,
    binarize,
    load_split,
    missing_files,
    train_validation,
)
from training.evaluate import Evaluation, evaluate
from training.export import export_onnx, verify_export
from training.model import parameter_count
from training.publish import GATE_TOLERANCE, publish_version, sha256_file
from training.train import final_figures, train

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunOptions:
    """How to run, as opposed to what to train (TrainConfig)."""

    data: DataSource
    run_dir: Path
    repository: Path | None  # where to publish; None: export into run_dir only
    version: int | None = None  # publish as this version instead of the next free one
    resume: bool = False
    force: bool = False
    gate_tolerance: float = GATE_TOLERANCE
    eval_k: int = EVAL_K
    eval_images: int | None = None  # evaluate on the first N validation images only
    train_images: int | None = None  # train on the first N training images only
    progress: bool = True


def data_info(source: DataSource, train_n: int, val_n: int) -> dict[str, Any]:
    files = sorted(p for p in source.directory.iterdir() if "ubyte" in p.name and p.is_file())
    return {
        "dataset": "mnist",
        "directory": str(source.directory),
        "train_images": train_n,
        "validation_images": val_n,
        "validation_split": "last 5,000 training images",
        "checksums_verified": source.checksums != {},
        "files": {p.name: sha256_file(p) for p in files},
    }


def test_split(source: DataSource) -> Split | None:
    """The t10k files if they are already here (never downloaded just for reporting)."""
    missing = missing_files(source, "test")
    if missing:
        log.warning(
            "test split: not evaluated: %s not found in %s (validation figures only)",
            " and ".join(missing), source.directory,
        )  # fmt: skip
        return None
    return load_split(source, "test")


def run(cfg: TrainConfig, opts: RunOptions) -> dict[str, Any]:
    """Train, evaluate, export/publish; returns (and writes) the run summary."""
    train_split, val_split = train_validation(load_split(opts.data, "train"))
    train_x = binarize(train_split.images[: opts.train_images], cfg.threshold)
    val_x = binarize(val_split.images, cfg.threshold)
    val_labels = torch.from_numpy(val_split.labels.astype("int64"))
    log.info("data: %d training, %d validation images", len(train_x), len(val_x))

    result = train(cfg, train_x, val_x, opts.run_dir, resume=opts.resume, progress=opts.progress)
    final_figures(result.model, val_x, val_labels, opts.run_dir)

    evaluations: dict[str, Evaluation] = {
        "validation": evaluate(result.model, val_x[: opts.eval_images], "validation", opts.eval_k)
    }
    test = test_split(opts.data)
    if test is not None:
        test_x = binarize(test.images, cfg.threshold)[: opts.eval_images]
        evaluations["test"] = evaluate(result.model, test_x, "test", opts.eval_k)
    headline = evaluations["validation"].to_dict()
    if "test" in evaluations:
        headline["test"] = evaluations["test"].to_dict()

    summary: dict[str, Any] = {
        "preset": cfg.preset,
        "iterations": result.iterations,
        "stopped_early": result.stopped_early,
        "train_seconds": round(result.seconds, 2),
        "iterations_per_second": round(result.iterations / max(result.seconds, 1e-9), 1),
        "parameters": parameter_count(result.model),
        "evaluation": headline,
        "run_dir": str(opts.run_dir),
    }
    run_info = {
        k: summary[k]
        for k in ("iterations", "stopped_early", "train_seconds", "iterations_per_second")
    }
    run_info["threads"] = cfg.threads
    summary.update(
        _publish(cfg, opts, result.model, headline, run_info, (len(train_x), len(val_x)))
    )
    (opts.run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _publish(
    cfg: TrainConfig,
    opts: RunOptions,
    model: Any,
    evaluation: dict[str, Any],
    run_info: dict[str, Any],
    sizes: tuple[int, int],
) -> dict[str, Any]:
    if opts.repository is None:
        out = opts.run_dir / "export"
        out.mkdir(parents=True, exist_ok=True)
        export_onnx(model, out)
        diff = verify_export(model, out)
        return {"published": None, "export_dir": str(out), "export_max_abs_diff": diff}
    published = publish_version(
        opts.repository,
        model,
        cfg,
        evaluation=evaluation,
        data_info=data_info(opts.data, *sizes),
        force=opts.force,
        tolerance=opts.gate_tolerance,
        run_info=run_info,
        version=opts.version,
    )
    return {"published": {"version": published.version, "path": str(published.path)},
            "gate": published.gate}  # fmt: skip


__all__ = ["DataError", "RunOptions", "run"]
