"""A whole run: check, load data, train, evaluate, export, publish, and write the figures.

Everything that can fail before training is checked before training (`preflight`).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch

from training import gate
from training.config import EVAL_K, TrainConfig
from training.data import DataSource, Split, binarize, load_split, missing_files, train_validation
from training.density import DensityFit, fit_density, posterior_means
from training.evaluate import OnnxVAE, evaluate, validation_terms
from training.export import export_onnx, verify_export
from training.loss import Encodes
from training.model import VAE, parameter_count
from training.progress import LINE_SECONDS, Meter, wants_bar
from training.publish import publish_version, sha256_file, write_density
from training.repository import check_repository
from training.rundir import check_run_dir
from training.train import TrainResult, final_figures, train

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunOptions:
    """How to run, as opposed to what to train (TrainConfig)."""

    data: DataSource
    run_dir: Path
    repository: Path | None  # where to publish; None: export into run_dir only
    version: int | None = None  # publish as this version instead of the next free one
    resume: bool = False  # continue the run in run_dir from its checkpoint
    overwrite: bool = False  # replace the previous run in run_dir
    force: bool = False  # publish even if the quality gate refuses
    gate_tolerance: float = gate.GATE_TOLERANCE
    embedded: Path = gate.EMBEDDED_MODEL  # the gate's reference in a repository with no version
    eval_k: int = EVAL_K
    eval_images: int | None = None  # evaluate on the first N validation images only
    train_images: int | None = None  # train on the first N training images only
    progress: bool = True  # a bar on a terminal; log lines otherwise
    line_seconds: float = LINE_SECONDS  # seconds between progress lines without a bar


@dataclass(frozen=True)
class Splits:
    """The validation images (raw, so that each model binarises them its own way), the test
    images when the t10k files are present, and the training images with their labels (the
    latent density is fitted to their codes)."""

    validation: Split
    test: Split | None
    info: dict[str, Any] = field(default_factory=dict)  # the data's provenance, for manifests
    train: Split | None = None


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
            " and ".join(missing),
            source.directory,
        )
        return None
    return load_split(source, "test")


def preflight(opts: RunOptions) -> None:
    """Raise on anything that would otherwise fail only after training."""
    check_run_dir(opts.run_dir, resume=opts.resume, overwrite=opts.overwrite)
    check_publishing(opts)


def check_publishing(opts: RunOptions) -> None:
    """Raise unless the evaluation can run and its result can be published (or compared)."""
    if opts.eval_k < 1:
        raise ValueError(f"--eval-k must be >= 1, got {opts.eval_k}")
    if opts.repository is None:
        return
    check_repository(opts.repository, opts.version)
    reference = gate.describe(opts.repository, opts.embedded)
    if reference is None and not opts.force:
        raise gate.PublishRefusedError(
            f"refused before training: the quality gate has nothing to compare with (no "
            f"version in {opts.repository} has figures and no embedded model in "
            f"{opts.embedded}); pass --force to publish anyway"
        )
    log.info(
        "quality gate: the new model will be compared with %s; tolerance %g nats",
        reference,
        opts.gate_tolerance,
    )


def figures(model: Any, threshold: float, splits: Splits, opts: RunOptions) -> dict[str, Any]:
    """The headline evaluation: validation figures, with the test split's beside them."""

    def one(split: Split, name: str) -> dict[str, Any]:
        x = binarize(split.images[: opts.eval_images], threshold)
        what = f"IWAE bound, k={opts.eval_k}, {name}"
        with Meter(
            what, len(x), "images", bar=wants_bar(opts.progress), every_s=opts.line_seconds
        ) as meter:
            return evaluate(model, x, name, opts.eval_k, meter=meter).to_dict()

    headline = one(splits.validation, "validation")
    if splits.test is not None:
        headline["test"] = one(splits.test, "test")
    return headline


def rescorer(splits: Splits, opts: RunOptions) -> gate.Rescore:
    """The gate's way to evaluate a published version on this run's validation images."""

    def rescore(version_dir: Path) -> float:
        reference = OnnxVAE(version_dir)
        x = binarize(splits.validation.images[: opts.eval_images], reference.threshold)
        return float(validation_terms(reference, x).loss.item())

    return rescore


def latent_density(
    model: Encodes, threshold: float, splits: Splits, opts: RunOptions | None
) -> DensityFit:
    """The density of the training images' codes (training.density), its number of
    components chosen on the validation images' (on the slices `opts` asks for)."""
    assert splits.train is not None
    train_n = opts.train_images if opts else None
    eval_n = opts.eval_images if opts else None
    train_x = binarize(splits.train.images[:train_n], threshold)
    val_x = binarize(splits.validation.images[:eval_n], threshold)
    codes, val_codes = posterior_means(model, train_x), posterior_means(model, val_x)
    fit = fit_density(codes, splits.train.labels[:train_n], val_codes)
    log.info("latent density: %d components", fit.summary["components"])
    return fit


def publish(
    model: VAE,
    cfg: TrainConfig,
    evaluation: dict[str, Any],
    splits: Splits,
    opts: RunOptions,
    run_info: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Publish through the gate, or export into the run dir when there is no repository;
    the latent density goes with the graphs either way (fitted only once the gate passes)."""
    density = partial(latent_density, model, cfg.threshold, splits, opts)
    if opts.repository is None:
        out = opts.run_dir / "export"
        out.mkdir(parents=True, exist_ok=True)
        export_onnx(model, out)
        diff = verify_export(model, out)
        write_density(out, density())
        return {"published": None, "export_dir": str(out), "export_max_abs_diff": diff}
    published = publish_version(
        opts.repository,
        model,
        cfg,
        evaluation=evaluation,
        data_info=splits.info,
        force=opts.force,
        tolerance=opts.gate_tolerance,
        rescore=rescorer(splits, opts),
        embedded=opts.embedded,
        run_info=run_info,
        version=opts.version,
        density=density,
    )
    return {
        "published": {"version": published.version, "path": str(published.path)},
        "gate": published.gate,
    }


def load_data(cfg: TrainConfig, opts: RunOptions) -> tuple[torch.Tensor, Splits]:
    """The binarised training images [N, 784], and the validation and test splits."""
    train_split, val_split = train_validation(load_split(opts.data, "train"))
    train_x = binarize(train_split.images[: opts.train_images], cfg.threshold)
    info = data_info(opts.data, len(train_x), len(val_split))
    log.info("data: %d training, %d validation images", len(train_x), len(val_split))
    return train_x, Splits(val_split, test_split(opts.data), info, train_split)


def run_info(result: TrainResult, cfg: TrainConfig) -> dict[str, Any]:
    """How the training went, for the summary and the manifest."""
    return {
        "iterations": result.iterations,
        "stopped_early": result.stopped_early,
        "train_seconds": round(result.seconds, 2),
        "iterations_per_second": round(result.iterations / max(result.seconds, 1e-9), 1),
        "threads": cfg.threads,
    }


def run(cfg: TrainConfig, opts: RunOptions) -> dict[str, Any]:
    """Check, train, evaluate, export/publish; returns (and writes) the run summary."""
    preflight(opts)
    train_x, splits = load_data(cfg, opts)
    val_x = binarize(splits.validation.images, cfg.threshold)
    result = train(
        cfg,
        train_x,
        val_x,
        opts.run_dir,
        resume=opts.resume,
        overwrite=opts.overwrite,
        progress=opts.progress,
        line_seconds=opts.line_seconds,
    )
    labels = torch.from_numpy(splits.validation.labels.astype("int64"))
    final_figures(result.model, val_x, labels, opts.run_dir)
    info = run_info(result, cfg)
    evaluation = figures(result.model, cfg.threshold, splits, opts)
    summary: dict[str, Any] = {
        "preset": cfg.preset,
        **info,
        "parameters": parameter_count(result.model),
        "evaluation": evaluation,
        "run_dir": str(opts.run_dir),
    }
    try:
        summary.update(publish(result.model, cfg, evaluation, splits, opts, info))
    except gate.PublishRefusedError as refused:
        summary.update(published=None, gate=str(refused))
        raise
    finally:
        (opts.run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary
