"""One frozen configuration per training run, filled by the CLI or a preset.

Each field carries its help text and the values it accepts (`Rule`, in the field's
metadata): `TrainConfig` checks them itself, and the CLI builds its flags from them.
"""

from __future__ import annotations

import dataclasses
import textwrap
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

# MNIST geometry lives here and nowhere else.
IMAGE_SHAPE: tuple[int, int] = (28, 28)
IMAGE_PIXELS: int = IMAGE_SHAPE[0] * IMAGE_SHAPE[1]

Objective = Literal["elbo", "iwae"]
LrSchedule = Literal["constant", "cosine"]

EVAL_K = 1000  # importance samples for the IWAE bound of a run's final evaluation
SMOKE_EVAL_K = 10  # ... for the `tiny` preset and --dry-run: seconds, not a minute


@dataclass(frozen=True)
class Rule:
    """What a field means and which values it accepts (bounds apply to each element of a
    tuple)."""

    help: str
    at_least: float | None = None
    above: float | None = None
    below: float | None = None
    choices: tuple[str, ...] = ()
    flag: bool = True  # the CLI offers it as --field-name

    def problem(self, value: Any) -> str | None:
        """Why `value` is not accepted, or None."""
        try:
            return self._problem(value)
        except TypeError:
            return "has the wrong type"

    def _problem(self, value: Any) -> str | None:
        if self.choices:
            return None if value in self.choices else f"choose one of {', '.join(self.choices)}"
        for v in value if isinstance(value, tuple) else (value,):
            if self.at_least is not None and v < self.at_least:
                return f"must be >= {self.at_least:g}"
            if self.above is not None and v <= self.above:
                return f"must be > {self.above:g}"
            if self.below is not None and v >= self.below:
                return f"must be < {self.below:g}"
        return None

    def describe(self) -> str:
        """The accepted values, in words, for --help."""
        parts = [f">= {self.at_least:g}"] if self.at_least is not None else []
        parts += [f"> {self.above:g}"] if self.above is not None else []
        parts += [f"< {self.below:g}"] if self.below is not None else []
        return " and ".join(parts)


def option(default: Any, text: str, **rule: Any) -> Any:
    """A config field with its help text and accepted values."""
    return field(default=default, metadata={"rule": Rule(text, **rule)})


def rule_of(f: dataclasses.Field[Any]) -> Rule | None:
    rule = f.metadata.get("rule")
    return rule if isinstance(rule, Rule) else None


@dataclass(frozen=True)
class TrainConfig:
    """Everything needed to rebuild the model and repeat the run."""

    preset: str = option("seed", "name of the preset this config started from", flag=False)
    latent_dim: int = option(64, "size of z", at_least=1)
    encoder_hidden: tuple[int, ...] = option((128,), "hidden widths of q(z|x)", at_least=1)
    decoder_hidden: tuple[int, ...] = option((128,), "hidden widths of p(x|z)", at_least=1)
    init_std: float = option(0.1, "std of the truncated-normal weight init", above=0)
    iterations: int = option(20_000, "optimiser steps", at_least=1)
    batch_size: int = option(100, "images per step", at_least=1)
    learning_rate: float = option(1e-3, "Adam step size", above=0)
    # option() returns a dataclasses.field; ruff knows that only of the immutable types.
    lr_schedule: LrSchedule = option(  # noqa: RUF009
        "constant", "learning rate over the run", choices=get_args(LrSchedule)
    )
    kl_warmup: int = option(0, "iterations over which the KL weight rises 0 -> 1", at_least=0)
    objective: Objective = option(  # noqa: RUF009
        "elbo", "iwae trains on the k-sample bound of Burda et al.", choices=get_args(Objective)
    )
    train_k: int = option(1, "importance samples per image for --objective iwae", at_least=1)
    threshold: float = option(0.5, "binarisation: pixel/255 > threshold", above=0, below=1)
    seed: int = option(0, "seeds weights, data order and noise; same seed, same run", at_least=0)
    threads: int = option(1, "torch intra-op threads (1 holds steady on a busy box)", at_least=1)
    log_every: int = option(100, "iterations between metrics-log lines", at_least=1)
    eval_every: int = option(1_000, "iterations between validation -ELBO figures", at_least=1)
    image_every: int = option(1_000, "iterations between reconstruction/sample PNGs", at_least=1)
    checkpoint_every: int = option(1_000, "iterations between checkpoints", at_least=1)
    early_stop_patience: int = option(
        0, "validation checks without improvement before stopping (0: off)", at_least=0
    )
    extra: dict[str, Any] = field(default_factory=dict, compare=False)  # free-form notes

    def __post_init__(self) -> None:
        problems = [
            f"{f.name} {problem}, got {getattr(self, f.name)!r}"
            for f in dataclasses.fields(self)
            if (rule := rule_of(f)) and (problem := rule.problem(getattr(self, f.name)))
        ]
        if self.objective == "elbo" and self.train_k != 1:
            problems.append("train_k > 1 needs objective='iwae'")
        if problems:
            raise ValueError("invalid training config: " + "; ".join(problems))

    @staticmethod
    def preset_names() -> list[str]:
        return sorted(PRESETS)

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> TrainConfig:
        """The named preset, with any fields overridden."""
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(sorted(PRESETS))}")
        return dataclasses.replace(PRESETS[name], **overrides)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["encoder_hidden"] = list(self.encoder_hidden)
        data["decoder_hidden"] = list(self.decoder_hidden)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in known}
        for key in ("encoder_hidden", "decoder_hidden"):
            if key in kwargs:
                kwargs[key] = tuple(kwargs[key])
        return cls(**kwargs)

    def differences(self, other: TrainConfig) -> dict[str, tuple[Any, Any]]:
        """Field name -> (this value, the other's), for the fields that differ."""
        return {
            f.name: (getattr(self, f.name), getattr(other, f.name))
            for f in dataclasses.fields(self)
            if f.compare and getattr(self, f.name) != getattr(other, f.name)
        }


PRESETS: dict[str, TrainConfig] = {
    # The teaching notebook's recipe, exactly: 784-128-(64+64) / 64-128-784, Adam 1e-3,
    # batch 100, 20,000 iterations, x > 0.5.
    "seed": TrainConfig(preset="seed"),
    # Beyond the seed (issue: model quality). Each keeps latent_dim 64 for a fair comparison.
    "long": TrainConfig(preset="long", iterations=100_000, lr_schedule="cosine"),
    "wide": TrainConfig(
        preset="wide",
        encoder_hidden=(512,),
        decoder_hidden=(512,),
        iterations=50_000,
        lr_schedule="cosine",
        kl_warmup=5_000,
    ),
    "deep": TrainConfig(
        preset="deep",
        encoder_hidden=(256, 256),
        decoder_hidden=(256, 256),
        iterations=50_000,
        lr_schedule="cosine",
        kl_warmup=5_000,
    ),
    "compact": TrainConfig(
        preset="compact",
        encoder_hidden=(192, 192),
        decoder_hidden=(192, 192),
        iterations=50_000,
        lr_schedule="cosine",
        kl_warmup=5_000,
    ),
    "iwae": TrainConfig(
        preset="iwae", objective="iwae", train_k=5, iterations=40_000, lr_schedule="cosine"
    ),
    "tiny": TrainConfig(
        preset="tiny",
        latent_dim=8,
        encoder_hidden=(32,),
        decoder_hidden=(32,),
        iterations=50,
        batch_size=20,
        log_every=10,
        eval_every=25,
        image_every=25,
        checkpoint_every=25,
    ),
}
PRESET_NOTES: dict[str, str] = {
    "seed": "the teaching notebook's recipe, exactly: 784-128-(64+64) / 64-128-784, Adam 1e-3, "
    "batch 100, 20,000 iterations, x > 0.5 (the seed values above)",
    "long": "the seed network trained five times longer, cosine-decayed",
    "wide": "one wider hidden layer, KL warm-up, cosine decay",
    "deep": "two hidden layers of 256, KL warm-up, cosine decay",
    "compact": "the deep recipe at 192 wide: the embedded default model's preset",
    "iwae": "the seed network on the k=5 importance-weighted bound (Burda et al. 2015)",
    "tiny": f"for smoke tests: seconds to run; evaluates with k={SMOKE_EVAL_K}",
}


def eval_k(preset: str) -> int:
    """The IWAE k a preset's run is evaluated with by default."""
    return SMOKE_EVAL_K if preset == "tiny" else EVAL_K


def preset_summary() -> str:
    """Each preset and the fields it sets beyond the seed's, for --help."""
    lines = []
    for name, cfg in PRESETS.items():
        changed = cfg.differences(PRESETS["seed"])
        changed.pop("preset", None)
        sets = ", ".join(f"{k}={value_text(v)}" for k, (v, _) in changed.items())
        text = PRESET_NOTES[name] + (f"; sets {sets}" if sets else "")
        lines.append(
            textwrap.fill(text, 88, initial_indent=f"  {name:9}", subsequent_indent=" " * 11)
        )
    return "\n".join(lines)


def value_text(value: Any) -> str:
    """A field's value as a flag takes it: tuples comma-separated."""
    return ",".join(map(str, value)) if isinstance(value, tuple) else str(value)
