"""`voxline --help` and every command's help are complete: every argument explained with its
default, every command described with examples."""

from __future__ import annotations

import argparse

import pytest

from voxline.cli import build_parser, main


def _commands() -> dict[str, argparse.ArgumentParser]:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


COMMANDS = sorted(_commands())


def test_the_top_level_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--help"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    for name in COMMANDS:
        line = next((line for line in out.splitlines() if line.split()[:1] == [name]), None)
        assert line is not None and len(line.split()) > 1, f"{name} has no one-line summary"
    assert "examples:" in out


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_is_described_with_examples(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main([command, "--help"])
    assert exited.value.code == 0
    parser = _commands()[command]
    assert parser.description and parser.epilog and "examples:" in parser.epilog
    assert isinstance(parser.formatter_class, type)
    assert issubclass(parser.formatter_class, argparse.RawDescriptionHelpFormatter)
    out = capsys.readouterr().out
    assert parser.epilog.splitlines()[1].strip() in out  # shown as written


@pytest.mark.parametrize("command", [None, *COMMANDS])
def test_every_argument_has_help_with_its_default(command: str | None) -> None:
    parser = build_parser() if command is None else _commands()[command]
    for action in parser._actions:
        if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
            continue
        name = "/".join(action.option_strings) or action.dest
        assert action.help and action.help.strip(), f"{command} {name}: no help"
        takes_value = action.option_strings and action.nargs != 0
        if takes_value:  # a flag (store_true) has no default worth stating
            assert "default" in action.help, f"{command} {name}: help does not give the default"
