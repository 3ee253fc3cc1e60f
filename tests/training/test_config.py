"""The configuration's fields are the CLI's flags, with the fields' own help."""

from __future__ import annotations

import dataclasses

import pytest

from training.cli import main
from training.config import TrainConfig, rule_of


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
