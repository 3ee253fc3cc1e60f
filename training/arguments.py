"""The `vae-train` command line: its parser, built from TrainConfig's field metadata.

Every TrainConfig field with a `Rule` is a flag (--field-name) with the rule's help and
accepted values; usage errors are one line.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
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
from training.evaluate import EVAL_SEED
from training.gate import EMBEDDED_MODEL, GATE_TOLERANCE
from training.progress import LINE_SECONDS

EMBEDDED_ENV = "VAE_EMBEDDED_MODEL"  # where the training image keeps the embedded model


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


def _progress_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("progress")
    g.add_argument(
        "--no-progress",
        action="store_true",
        help="no progress bar: a log line every --log-seconds instead (as when "
        "stderr is not a terminal)",
    )
    g.add_argument(
        "--log-seconds",
        type=checked(float, Rule("", above=0)),
        default=LINE_SECONDS,
        help="seconds between progress lines without a bar (default: %(default)s)",
    )


def _gate_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("publishing and the quality gate")
    g.add_argument(
        "--model-repository",
        type=Path,
        default=Path("models"),
        help="publish into this repository (default: %(default)s)",
    )
    g.add_argument(
        "--version",
        type=NON_NEGATIVE,
        help="publish as this version number instead of the next free one "
        "(the embedded default model is version 0)",
    )
    g.add_argument(
        "--force",
        action="store_true",
        help="publish even if the new model is worse than what the service would "
        "serve otherwise, or cannot be compared with it",
    )
    g.add_argument(
        "--gate-tolerance",
        type=checked(float, Rule("", at_least=0)),
        default=GATE_TOLERANCE,
        help="nats of validation -ELBO a new model may lose (default: %(default)s)",
    )
    g.add_argument(
        "--embedded-model",
        type=Path,
        default=Path(os.environ.get(EMBEDDED_ENV) or EMBEDDED_MODEL),
        help="the embedded default model's repository, the gate's reference when "
        f"no version has figures (default: ${EMBEDDED_ENV} or %(default)s)",
    )
    g.add_argument(
        "--eval-k",
        type=AT_LEAST_1,
        help=f"importance samples for the IWAE bound (default: {EVAL_K}; "
        f"{SMOKE_EVAL_K} for the tiny preset and --dry-run)",
    )


def _run_args(p: argparse.ArgumentParser) -> None:
    r = p.add_argument_group("run directory")
    r.add_argument(
        "--run-dir",
        type=Path,
        help="metrics, images, checkpoints (default: a new runs/PRESET-DATE-TIME)",
    )
    again = r.add_mutually_exclusive_group()
    again.add_argument(
        "--resume", action="store_true", help="continue the run in --run-dir from its checkpoint"
    )
    again.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the previous run in --run-dir (its files only)",
    )
    r.add_argument(
        "--dry-run",
        action="store_true",
        help="smoke test: 20 iterations on 2,000 images, k=10 on 500, no publish",
    )


def _train_parser(sub: Any) -> None:
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
    _progress_args(t)
    _run_args(t)
    _gate_args(t)
    t.add_argument("--no-publish", action="store_true", help="export into the run dir only")


def _evaluate_parser(sub: Any) -> None:
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
    e.add_argument(
        "--seed",
        type=NON_NEGATIVE,
        default=EVAL_SEED,
        help="noise seed (default: %(default)s, as training's validation figures)",
    )
    _data_args(e)
    _progress_args(e)


def parser(description: str) -> argparse.ArgumentParser:
    """The parser of every `vae-train` command."""
    parser = _Parser(
        prog="vae-train",
        description=description,
        allow_abbrev=False,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _train_parser(sub)

    _evaluate_parser(sub)
    pb = sub.add_parser("publish", help="evaluate a checkpoint, then publish it through the gate")
    pb.add_argument("--checkpoint", type=Path, required=True)
    _data_args(pb)
    _progress_args(pb)
    _gate_args(pb)

    fd = sub.add_parser(
        "fit-density",
        help="fit the latent density of a published version that has none, and add it",
    )
    fd.add_argument("--version-dir", type=Path, required=True, help="a version directory")
    _data_args(fd)

    d = sub.add_parser("download", help="fetch the MNIST files that are missing")
    d.add_argument("--with-test", action="store_true", help="also fetch the t10k test files")
    _data_args(d)
    return parser
