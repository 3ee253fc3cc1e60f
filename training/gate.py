"""The quality gate: a new model is published only if it is no worse than what the service
would otherwise serve.

That is the newest published version, or, in a repository with none, the embedded default
model. A version whose manifest has no readable figures never switches the gate off: the
newest version that has them is compared instead, and the verdict says so. Figures recorded
on other data (another split, other files) are not compared as they are: the reference is
evaluated on this run's split instead.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from training.data import SPLIT_FILES
from training.repository import complete_versions, read_manifest

GATE_TOLERANCE = 1.0  # nats of validation -ELBO a new model may lose before it is refused
# The embedded default model (a repository holding version 0), read as files: training and
# service never import each other. The training image sets VAE_EMBEDDED_MODEL instead.
EMBEDDED_MODEL = Path(__file__).resolve().parents[1] / "service" / "default_model"

# A version directory -> its validation -ELBO on this run's split, with this run's noise.
Rescore = Callable[[Path], float]

log = logging.getLogger(__name__)


class PublishRefusedError(RuntimeError):
    """The quality gate refused the new model (pass force=True to override)."""


@dataclass(frozen=True)
class Reference:
    """What the new model is compared with."""

    label: str  # "version 3", "the embedded default model (version 0)"
    version_dir: Path
    evaluation: dict[str, Any]
    data: dict[str, Any]
    skipped: tuple[int, ...] = ()  # newer versions passed over: no readable figures


def figures(manifest: dict[str, Any]) -> dict[str, Any] | None:
    """The manifest's evaluation if it has a numeric -ELBO and a split, else None."""
    evaluation = manifest.get("evaluation")
    if not isinstance(evaluation, dict) or not isinstance(evaluation.get("split"), str):
        return None
    try:
        finite = math.isfinite(float(evaluation["neg_elbo"]))
    except (KeyError, TypeError, ValueError):
        return None
    return evaluation if finite else None


def _newest_with_figures(repo_root: Path, label: str) -> tuple[Reference | None, list[int]]:
    skipped: list[int] = []
    for version, path in sorted(complete_versions(repo_root).items(), reverse=True):
        manifest = read_manifest(path) or {}
        if (evaluation := figures(manifest)) is not None:
            name = label.format(version=version)
            return Reference(name, path, evaluation, manifest.get("data") or {}), skipped
        skipped.append(version)
    return None, skipped


def find_reference(repo_root: Path, embedded: Path = EMBEDDED_MODEL) -> Reference | None:
    """The newest version of repo_root with readable figures, else the embedded model."""
    found, skipped = _newest_with_figures(repo_root, "version {version}")
    if found is None:
        found, _ = _newest_with_figures(embedded, "the embedded default model (version {version})")
    if found is None:
        return None
    return Reference(found.label, found.version_dir, found.evaluation, found.data, tuple(skipped))


def same_split(
    new: dict[str, Any], new_data: dict[str, Any], old: dict[str, Any], old_data: dict[str, Any]
) -> bool:
    """Both figures come from the same images: split, count and source files agree."""
    split = new.get("split")
    if split != old.get("split") or new.get("images") != old.get("images"):
        return False
    stems = SPLIT_FILES["test" if split == "test" else "train"][:2]
    new_files, old_files = new_data.get("files") or {}, old_data.get("files") or {}
    ours = {k: v for k, v in new_files.items() if k.startswith(stems)}
    return bool(ours) and all(old_files.get(k) == v for k, v in ours.items())


def _reference_figure(
    ref: Reference, new: dict[str, Any], new_data: dict[str, Any], rescore: Rescore | None
) -> tuple[float | None, str]:
    """The reference's -ELBO comparable with the new one, and how it was obtained."""
    split = new.get("split")
    if same_split(new, new_data, ref.evaluation, ref.data):
        return float(ref.evaluation["neg_elbo"]), f"recorded on the same {split} split"
    if rescore is None:
        return None, f"{ref.label}'s figures are on other data and no data to evaluate it on"
    try:
        return rescore(ref.version_dir), f"evaluated now on this run's {split} split"
    except Exception as exc:  # any failure must refuse, not switch the gate off
        return None, f"{ref.label} could not be evaluated ({exc})"


def _unjudged(reason: str, force: bool) -> str:
    if force:
        return f"not compared, forced: {reason}"
    raise PublishRefusedError(f"refused: {reason}; pass --force to publish anyway")


def judge(
    repo_root: Path,
    evaluation: dict[str, Any] | None,
    data_info: dict[str, Any] | None,
    *,
    tolerance: float = GATE_TOLERANCE,
    force: bool = False,
    rescore: Rescore | None = None,
    embedded: Path = EMBEDDED_MODEL,
) -> str:
    """The verdict in words; raise PublishRefusedError when the new model is worse by more
    than `tolerance` nats, or cannot be compared, unless `force`."""
    if evaluation is None or figures({"evaluation": evaluation}) is None:
        return _unjudged("the new model has no figures (evaluate it before publishing)", force)
    ref = find_reference(repo_root, embedded)
    if ref is None:
        reason = (
            f"nothing to compare with: no version has figures and no embedded model in {embedded}"
        )
        return _unjudged(reason, force)
    old, how = _reference_figure(ref, evaluation, data_info or {}, rescore)
    if old is None:
        return _unjudged(how, force)
    new = float(evaluation["neg_elbo"])
    skipped = ", ".join(map(str, ref.skipped))
    note = f"; newer version(s) {skipped} have no readable figures" if skipped else ""
    verdict = (
        f"new -ELBO {new:.2f} vs {ref.label}'s {old:.2f}, {how} (tolerance {tolerance:g}){note}"
    )
    if new <= old + tolerance:
        return f"passed: {verdict}"
    if force:
        return f"worse but forced: {verdict}"
    raise PublishRefusedError(f"refused: {verdict}; pass --force to publish anyway")


def describe(repo_root: Path, embedded: Path = EMBEDDED_MODEL) -> str | None:
    """What the gate will compare with, for a line before training; None: nothing."""
    ref = find_reference(repo_root, embedded)
    if ref is None:
        return None
    old = float(ref.evaluation["neg_elbo"])
    return f"{ref.label}, validation -ELBO {old:.2f} as recorded"
