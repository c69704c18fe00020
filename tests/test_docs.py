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


def _doc_commands(path: Path) -> list[str]:
    """Every `neuroflood …` command in the ```bash blocks of a markdown file (continuations joined)."""
    import re

    cmds = []
    for block in re.findall(r"```bash\n(.*?)```", path.read_text(), re.S):
        text = re.sub(r"\\\n\s*", " ", block)
        for line in text.splitlines():
            line = line.split(" #")[0].strip()
            if line.startswith("neuroflood ") and "..." not in line:
                cmds.append(line)
    return cmds


def test_documented_commands_parse_and_the_cheap_ones_run(tmp_path, monkeypatch):
    """README and the user guide: every command parses as written; synth, prepare and export run."""
    import shlex

    from neuroflood.cli import build_parser, main

    cmds = _doc_commands(ROOT / "README.md") + _doc_commands(ROOT / "docs" / "user-guide.md")
    assert len(cmds) >= 10
    parser = build_parser()
    for cmd in cmds:
        parser.parse_args(shlex.split(cmd)[1:])  # exits (fails the test) on an unknown option
    monkeypatch.chdir(tmp_path)
    ran = set()
    for cmd in cmds:
        argv = shlex.split(cmd)[1:]
        if argv[0] == "synth" and "synth" not in ran:
            argv[argv.index("--shape") + 1] = "24,32,32"  # tiny size, same command otherwise
        elif argv[0] == "prepare" and "prepare" not in ran:
            argv = [a.replace("12,12,12", "4,4,4") for a in argv]
        else:
            continue
        assert main(argv) == 0, cmd
        ran.add(argv[0])
    assert ran == {"synth", "prepare"}
    assert main(["export", "vol.h5:labels", "vol.zarr/labels"]) == 0
    assert (tmp_path / "prep" / "coordinates.nfc").exists()
