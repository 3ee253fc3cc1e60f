"""Option values are checked against their choices and ranges, in TrainConfig and the CLI."""

from __future__ import annotations

import dataclasses

import pytest

from training.cli import main
from training.config import PRESETS, TrainConfig, rule_of, value_text


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("lr_schedule", "Cosine", "lr_schedule choose one of constant, cosine, got 'Cosine'"),
        ("objective", "IWAE", "objective choose one of elbo, iwae, got 'IWAE'"),
        ("encoder_hidden", (0,), r"encoder_hidden must be >= 1, got \(0,\)"),
        ("decoder_hidden", (64, -1), "decoder_hidden must be >= 1"),
        ("threshold", 1.0, "threshold must be < 1"),
        ("learning_rate", 0.0, "learning_rate must be > 0"),
        ("kl_warmup", -5, "kl_warmup must be >= 0"),
        ("iterations", "many", "iterations has the wrong type"),
    ],
)
def test_the_config_refuses_values_outside_their_choices_and_ranges(
    field: str, value: object, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        TrainConfig(**{field: value})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=message):  # a manifest or checkpoint read back
        TrainConfig.from_dict({**TrainConfig().to_dict(), field: value})


def test_every_problem_is_named_at_once() -> None:
    with pytest.raises(ValueError) as err:
        TrainConfig(lr_schedule="Cosine", objective="IWAE", train_k=5)  # type: ignore[arg-type]
    assert "lr_schedule" in str(err.value) and "objective" in str(err.value)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--lr-schedule", "Cosine"], "argument --lr-schedule: invalid choice: 'Cosine'"),
        (["--objective", "IWAE", "--train-k", "5"], "argument --objective: invalid choice"),
        (["--encoder-hidden", "0"], "argument --encoder-hidden: must be >= 1, got 0"),
        (["--threshold", "1.5"], "argument --threshold: must be < 1, got 1.5"),
        (["--eval-k", "0"], "argument --eval-k: must be >= 1, got 0"),
        (["--gate-tolerance", "-1"], "argument --gate-tolerance: must be >= 0, got -1"),
        (["--iterations", "ten"], "argument --iterations: invalid int value: 'ten'"),
        (["--resume", "--overwrite"], "argument --overwrite: not allowed with argument --resume"),
    ],
)
def test_the_cli_refuses_them_in_one_line(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["train", *argv])
    err = capsys.readouterr().err
    assert exit_.value.code == 2
    assert message in err and err.count("\n") == 1, err


def test_every_config_field_is_a_flag_with_the_fields_help(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = " ".join(capsys.readouterr().out.split())  # argparse wraps the help text
    for f in dataclasses.fields(TrainConfig):
        rule = rule_of(f)
        if rule is not None and rule.flag:
            assert f"--{f.name.replace('_', '-')}" in out and rule.help in out, f.name


def test_help_says_what_each_preset_sets(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    for name, cfg in PRESETS.items():
        assert f" {name} " in out, name
        for field, (value, _) in cfg.differences(PRESETS["seed"]).items():
            if field != "preset":
                assert f"{field}={value_text(value)}" in out, (name, field)
