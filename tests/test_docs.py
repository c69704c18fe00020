"""Docs that must not drift from the code."""

from __future__ import annotations

from pathlib import Path

from neuroflood.configdoc import render

ROOT = Path(__file__).resolve().parents[1]


def test_configuration_reference_is_generated_from_the_config_models():
    committed = (ROOT / "docs" / "configuration.md").read_text()
    assert committed == render(), "docs/configuration.md is stale: run `python -m neuroflood.configdoc > docs/configuration.md`"


def test_every_command_has_help():
    from neuroflood.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    for name, p in sub.choices.items():
        text = p.format_help()
        assert p.description, name
        for action in p._actions:
            if action.dest != "help" and action.option_strings:
                assert action.help, f"neuroflood {name} {action.option_strings[0]} has no help"
        assert "usage:" in text
