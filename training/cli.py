"""`vae-train` (also `python -m training`): train, evaluate, publish and fetch data.

vae-train train --preset seed --data-dir data/mnist --model-repository models
vae-train evaluate --model-repository models
vae-train download --data-dir data/mnist
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

from training.config import (
    EVAL_K,
    SMOKE_EVAL_K,
    Rule,
    TrainConfig,
    preset_summary,
    rule_of,
    value_text,
)
from training.data import DEFAULT_MIRRORS, DataError, DataSource, binarize, load_split
from training.data import train_validation as split_validation
from training.publish import (
    GATE_TOLERANCE,
    PublishRefusedError,
    complete_versions,
    publish_version,
)

log = logging.getLogger("training")

DRY_RUN = {
    "iterations": 20,
    "log_every": 5,
    "eval_every": 10,
    "image_every": 10,
    "checkpoint_every": 10,
}


class _Parser(argparse.ArgumentParser):
    """Usage errors in one line, as every other error."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def checked(kind: Callable[[str], Any], rule: Rule) -> Callable[[str], Any]:
    """An argparse type: parse with `kind`, then refuse what `rule` refuses."""

    def parse(text: str) -> Any:
        value = kind(text)
        if (problem := rule.problem(value)) is not None:
            raise argparse.ArgumentTypeError(f"{problem}, got {text}")
        return value

    parse.__name__ = getattr(kind, "__name__", "value")  # argparse: "invalid int value"
    return parse


AT_LEAST_1 = checked(int, Rule("", at_least=1))
NON_NEGATIVE = checked(int, Rule("", at_least=0))


def _config_flags(p: argparse.ArgumentParser) -> None:
    """One flag per TrainConfig field, with the field's help and accepted values."""
    g = p.add_argument_group("overrides of the preset (TrainConfig fields)")
    seed = TrainConfig()
    for f in dataclasses.fields(TrainConfig):
        rule = rule_of(f)
        if rule is None or not rule.flag:
            continue
        default, flag = getattr(seed, f.name), f"--{f.name.replace('_', '-')}"
        limits = rule.describe()
        text = f"{rule.help} ({limits + '; ' if limits else ''}seed: {value_text(default)})"
        if rule.choices:
            g.add_argument(flag, choices=rule.choices, help=text)
        elif isinstance(default, tuple):
            g.add_argument(flag, type=checked(int, rule), nargs="+", metavar="WIDTH", help=text)
        else:
            kind = type(default)
            g.add_argument(flag, type=checked(kind, rule), metavar=kind.__name__.upper(), help=text)


def _data_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data")
    g.add_argument(
        "--data-dir",
        type=Path,
        default=Path("data/mnist"),
        help="directory of the MNIST IDX files, gz or raw (default: %(default)s)",
    )
    g.add_argument(
        "--mirror",
        action="append",
        dest="mirrors",
        metavar="URL",
        help="download base URL, tried in order (repeatable; default: two public mirrors)",
    )
    g.add_argument("--no-download", action="store_true", help="fail instead of downloading")
    g.add_argument(
        "--allow-unverified-data",
        action="store_true",
        help="accept files whose checksums or counts differ from standard MNIST",
    )


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="vae-train",
        description=__doc__,
        allow_abbrev=False,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    t = sub.add_parser(
        "train",
        help="train, evaluate, export and publish a model",
        epilog="presets:\n" + preset_summary(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    t.add_argument(
        "--preset",
        default="seed",
        choices=TrainConfig.preset_names(),
        help="starting configuration (default: %(default)s, the notebook's recipe; "
        "each is described below)",
    )
    _config_flags(t)
    _data_args(t)
    r = t.add_argument_group("run")
    r.add_argument(
        "--run-dir", type=Path, help="metrics, images, checkpoints (default: runs/PRESET)"
    )
    r.add_argument(
        "--resume", action="store_true", help="continue from the run dir's last checkpoint"
    )
    r.add_argument(
        "--model-repository",
        type=Path,
        default=Path("models"),
        help="publish into this repository (default: %(default)s)",
    )
    r.add_argument("--no-publish", action="store_true", help="export into the run dir only")
    r.add_argument(
        "--version",
        type=NON_NEGATIVE,
        help="publish as this version number instead of the next free one "
        "(the embedded default model is version 0)",
    )
    r.add_argument("--force", action="store_true", help="publish even if the quality gate refuses")
    r.add_argument(
        "--gate-tolerance",
        type=checked(float, Rule("", at_least=0)),
        default=GATE_TOLERANCE,
        help="nats of validation -ELBO a new model may lose (default: %(default)s)",
    )
    r.add_argument(
        "--eval-k",
        type=AT_LEAST_1,
        default=EVAL_K,
        help="importance samples for the IWAE NLL (default: %(default)s)",
    )
    r.add_argument("--no-progress", action="store_true", help="no progress bar")
    r.add_argument(
        "--dry-run",
        action="store_true",
        help=f"smoke test: 20 iterations on 2,000 images, k={SMOKE_EVAL_K} on 500, no publish",
    )

    e = sub.add_parser("evaluate", help="-ELBO and IWAE NLL of a checkpoint or published version")
    which = e.add_mutually_exclusive_group(required=True)
    which.add_argument("--checkpoint", type=Path, help="a training checkpoint (last.pt)")
    which.add_argument("--version-dir", type=Path, help="a published version directory")
    which.add_argument("--model-repository", type=Path, help="a repository (newest version)")
    e.add_argument("--split", choices=["validation", "test"], default="validation")
    e.add_argument(
        "--k", type=AT_LEAST_1, default=EVAL_K, help="importance samples (default: %(default)s)"
    )
    e.add_argument("--images", type=AT_LEAST_1, help="evaluate on the first N images only")
    e.add_argument("--seed", type=int, default=0)
    _data_args(e)

    pb = sub.add_parser("publish", help="publish a checkpoint into a model repository")
    pb.add_argument("--checkpoint", type=Path, required=True)
    pb.add_argument("--model-repository", type=Path, required=True)
    pb.add_argument("--force", action="store_true", help="publish even without figures")

    d = sub.add_parser("download", help="fetch the MNIST files that are missing")
    d.add_argument("--with-test", action="store_true", help="also fetch the t10k test files")
    _data_args(d)
    return parser


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
    """The preset with the flags given on the command line."""
    names = [f.name for f in dataclasses.fields(TrainConfig) if rule_of(f)]
    overrides: dict[str, Any] = {
        name: tuple(v) if isinstance(v, list) else v
        for name in names
        if (v := getattr(args, name, None)) is not None
    }
    if args.dry_run:
        overrides = {**overrides, **DRY_RUN}
    return TrainConfig.from_preset(args.preset, **overrides)


def cmd_train(args: argparse.Namespace) -> int:
    from training.pipeline import RunOptions, run

    cfg = _config(args)
    dry = args.dry_run
    run_dir = args.run_dir or Path("runs") / (f"{cfg.preset}-dry-run" if dry else cfg.preset)
    opts = RunOptions(
        data=_source(args),
        run_dir=run_dir,
        repository=None if (args.no_publish or dry) else args.model_repository,
        version=args.version,
        resume=args.resume,
        force=args.force,
        gate_tolerance=args.gate_tolerance,
        eval_k=SMOKE_EVAL_K if dry else args.eval_k,
        eval_images=500 if dry else None,
        train_images=2_000 if dry else None,
        progress=not args.no_progress,
    )
    log.info("config: %s", json.dumps(cfg.to_dict()))
    summary = run(cfg, opts)
    print(json.dumps(summary, indent=2))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    import torch

    from training.evaluate import OnnxVAE, describe_version, evaluate
    from training.loss import Encodes
    from training.train import load_model

    model: Encodes
    if args.checkpoint:
        model, cfg = load_model(args.checkpoint)
        threshold, what = cfg.threshold, str(args.checkpoint)
    else:
        version_dir = args.version_dir or _newest(args.model_repository)
        onnx_model = OnnxVAE(version_dir)
        threshold = float(onnx_model.manifest["preprocessing"]["binarize_threshold"])
        model, what = onnx_model, str(version_dir)
    source = _source(args)
    if args.split == "test":
        images = load_split(source, "test").images
    else:
        images = split_validation(load_split(source, "train"))[1].images
    x = binarize(images[: args.images], threshold)
    torch.set_num_threads(1)
    result = evaluate(model, x, args.split, args.k, args.seed)
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
    from training.train import load_model

    model, cfg = load_model(args.checkpoint)
    result = publish_version(args.model_repository, model, cfg, force=args.force)
    print(json.dumps({"version": result.version, "path": str(result.path), "gate": result.gate}))
    return 0


def cmd_download(args: argparse.Namespace) -> int:
    source = _source(args)
    for split in ("train", "test") if args.with_test else ("train",):
        data = load_split(source, split)
        print(f"{split}: {len(data)} images verified in {source.directory}")
    return 0


COMMANDS = {
    "train": cmd_train,
    "evaluate": cmd_evaluate,
    "publish": cmd_publish,
    "download": cmd_download,
}


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    # Our own progress at INFO; the exporter's libraries only when something is wrong.
    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("training").setLevel(logging.DEBUG if args.verbose else logging.INFO)
    try:
        return COMMANDS[args.command](args)
    except (DataError, PublishRefusedError, ValueError, FileNotFoundError) as exc:
        log.error("%s", exc)
        return 2


if __name__ == "__main__":
    sys.exit(main())
