"""The console command: dispatch to each command, and each command's --help built from its docstring
and its YAML file (not Hydra's config dump)."""

from __future__ import annotations

import pytest

from detector.cli import main as cli


def _help(capsys, command):
    cli.main([command, "--help"])
    return capsys.readouterr().out


def test_overview_lists_every_command(capsys):
    cli.main([])
    out = capsys.readouterr().out
    for name in cli.COMMANDS:
        assert f"  {name} " in out


def test_unknown_command_is_one_line():
    with pytest.raises(SystemExit, match="unknown command 'trian'"):
        cli.main(["trian"])


def test_train_help_shows_groups_keys_and_their_comments(capsys):
    out = _help(capsys, "train")
    assert "roilens train model/pooler=roi_pool" in out  # the docstring's examples, as console commands
    assert "model/pooler   roi_align, roi_pool" in out
    assert "seeds init, sampling, shuffling and augmentation" in out  # the YAML's own comment
    assert "_target_" not in out and "hydra" not in out.split("Hydra's own help")[0].lower()


def test_infer_help_lists_only_what_infer_uses(capsys):
    out = _help(capsys, "infer")
    assert "checkpoint" in out and "score_thresh" in out
    for unused in ("augmentation", "solver", "pooler"):
        assert unused not in out


@pytest.mark.parametrize("command", [c for c, (m, _) in cli.COMMANDS.items() if m not in ("benchmark", "visualize_roi")])
def test_every_hydra_command_has_help(capsys, command):
    out = _help(capsys, command)
    assert f"roilens {command} --cfg job" in out
