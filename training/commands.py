"""What each `vae-train` command does, given its parsed arguments (training.cli)."""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from training.checkpoint import checkpoint_run_info, load_model
from training.config import SMOKE_EVAL_K, TrainConfig, eval_k, rule_of
from training.data import DEFAULT_MIRRORS, DataError, DataSource, binarize, load_split
from training.data import train_validation as split_validation
from training.evaluate import OnnxVAE, describe_version, evaluate
from training.loss import Encodes
from training.pipeline import (
    RunOptions,
    Splits,
    check_publishing,
    data_info,
    figures,
    latent_density,
    publish,
    run,
)
from training.pipeline import test_split as present_test_split
from training.progress import Meter, wants_bar
from training.publish import write_density, write_json_atomic
from training.repository import MANIFEST, complete_versions
from training.rundir import default_run_dir

log = logging.getLogger("training")

# --dry-run: the whole pipeline in seconds, on a slice of the data, never published.
DRY_RUN = {
    "iterations": 20,
    "log_every": 5,
    "eval_every": 10,
    "image_every": 10,
    "checkpoint_every": 10,
}
DRY_RUN_IMAGES = {"train_images": 2_000, "eval_images": 500}


def _source(args: argparse.Namespace) -> DataSource:
    unverified = args.allow_unverified_data
    return DataSource(
        directory=args.data_dir,
        mirrors=tuple(args.mirrors or DEFAULT_MIRRORS),
        checksums={} if unverified else None,
        download=not args.no_download,
        expect_standard_counts=not unverified,
    )


def _config(args: argparse.Namespace) -> TrainConfig:
    """The preset with the flags given on the command line (TrainConfig checks them all)."""
    names = [f.name for f in TrainConfig.__dataclass_fields__.values() if rule_of(f)]
    overrides: dict[str, Any] = {
        name: tuple(v) if isinstance(v, list) else v
        for name in names
        if (v := getattr(args, name, None)) is not None
    }
    if args.dry_run:
        overrides.update(DRY_RUN)
    return TrainConfig.from_preset(args.preset, **overrides)


def _options(args: argparse.Namespace, cfg: TrainConfig, run_dir: Path) -> RunOptions:
    dry = args.dry_run
    return RunOptions(
        data=_source(args),
        run_dir=run_dir,
        repository=None if (args.no_publish or dry) else args.model_repository,
        version=args.version,
        resume=args.resume,
        overwrite=args.overwrite,
        force=args.force,
        gate_tolerance=args.gate_tolerance,
        embedded=args.embedded_model,
        eval_k=args.eval_k or (SMOKE_EVAL_K if dry else eval_k(cfg.preset)),
        progress=not args.no_progress,
        line_seconds=args.log_seconds,
        **(DRY_RUN_IMAGES if dry else {}),
    )


def cmd_train(args: argparse.Namespace) -> int:
    cfg = _config(args)
    if args.resume and args.run_dir is None:
        raise ValueError("--resume needs --run-dir: the run to continue")
    args.resolved_run_dir = args.run_dir or default_run_dir(cfg.preset, args.dry_run)
    opts = _options(args, cfg, args.resolved_run_dir)
    log.info("run directory: %s", opts.run_dir)
    log.info("config: %s", json.dumps(cfg.to_dict()))
    summary = run(cfg, opts)
    print(json.dumps(summary, indent=2))
    return 0


def _validation_and_test(source: DataSource) -> Splits:
    train = load_split(source, "train")
    train_part, validation = split_validation(train)
    info = data_info(source, len(train_part), len(validation))
    return Splits(validation, present_test_split(source), info, train_part)


def cmd_evaluate(args: argparse.Namespace) -> int:
    model: Encodes
    if args.checkpoint:
        model, cfg = load_model(args.checkpoint)
        threshold, what = cfg.threshold, str(args.checkpoint)
    else:
        version_dir = args.version_dir or _newest(args.model_repository)
        onnx_model = OnnxVAE(version_dir)
        model, threshold, what = onnx_model, onnx_model.threshold, str(version_dir)
    source = _source(args)
    if args.split == "test":
        images = load_split(source, "test").images
    else:
        images = split_validation(load_split(source, "train"))[1].images
    x = binarize(images[: args.images], threshold)
    torch.set_num_threads(1)
    with Meter(
        f"IWAE bound, k={args.k}, {args.split}",
        len(x),
        "images",
        bar=wants_bar(not args.no_progress),
        every_s=args.log_seconds,
    ) as meter:
        result = evaluate(model, x, args.split, args.k, args.seed, meter=meter)
    report = {"model": what, **result.to_dict()}
    if not args.checkpoint:
        report.update(describe_version(version_dir, onnx_model))
    print(json.dumps(report, indent=2))
    return 0


def _newest(repository: Path) -> Path:
    versions = complete_versions(repository)
    if not versions:
        raise DataError(f"no published version (a vae/<n>/manifest.json) under {repository}")
    return versions[max(versions)]


def cmd_publish(args: argparse.Namespace) -> int:
    """Evaluate the checkpoint's model on the validation split, then publish through the gate."""
    model, cfg = load_model(args.checkpoint)
    opts = RunOptions(
        data=_source(args),
        run_dir=args.checkpoint.parent,
        repository=args.model_repository,
        version=args.version,
        force=args.force,
        gate_tolerance=args.gate_tolerance,
        embedded=args.embedded_model,
        eval_k=args.eval_k or eval_k(cfg.preset),
        progress=not args.no_progress,
        line_seconds=args.log_seconds,
    )
    check_publishing(opts)
    splits = _validation_and_test(opts.data)
    torch.set_num_threads(cfg.threads)
    evaluation = figures(model, cfg.threshold, splits, opts)
    result = publish(model, cfg, evaluation, splits, opts, checkpoint_run_info(args.checkpoint))
    print(json.dumps({**result, "evaluation": evaluation}, indent=2))
    return 0


def cmd_fit_density(args: argparse.Namespace) -> int:
    """Fit the latent density of a version published without one and add it to the version
    (same graphs, so the same figures): density.npz first, then the manifest, atomically.
    For a version no service has loaded yet, such as the embedded default model."""
    version_dir: Path = args.version_dir
    model = OnnxVAE(version_dir)  # reads and checks the manifest
    manifest = model.manifest
    if manifest.get("density"):
        raise DataError(f"{version_dir} already has a latent density ({manifest['density']})")
    splits = _validation_and_test(_source(args))
    density = latent_density(model, model.threshold, splits, None)
    manifest["density"] = write_density(version_dir, density)
    write_json_atomic(version_dir / MANIFEST, manifest)
    print(json.dumps(manifest["density"], indent=2))
    return 0


def cmd_download(args: argparse.Namespace) -> int:
    source = _source(args)
    for split in ("train", "test") if args.with_test else ("train",):
        data = load_split(source, split)
        print(f"{split}: {len(data)} images verified in {source.directory}")
    return 0


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "train": cmd_train,
    "evaluate": cmd_evaluate,
    "publish": cmd_publish,
    "fit-density": cmd_fit_density,
    "download": cmd_download,
}
