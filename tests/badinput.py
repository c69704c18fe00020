"""Helpers of the bad-input sweep (tests/test_bad_inputs_*.py).

Each sweep file is a table of :class:`Case` rows; every row runs one ``neuroflood`` command
in-process with a bad input and asserts three things: a non-zero exit, exactly one error line
on stderr naming the problem (no traceback), and what is on disk afterwards (nothing
half-written, nothing the command did not create replaced or removed).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

# argparse prints "usage: …" then "neuroflood CMD: error: …"; our own errors are one line.
ERROR_LINE = re.compile(r"^neuroflood( [a-z-]+)*: error: .+")


@dataclass
class Case:
    """One bad input: ``argv`` (``{d}`` is replaced by the case's directory) and the message.

    ``message`` is a regular expression searched (case-insensitively) in the error line.
    ``setup(d)`` prepares the directory before the run; ``after(d)`` checks it afterwards
    (on top of the default check that nothing existing changed).
    """

    id: str
    argv: list[str]
    message: str
    setup: Callable[[Path], None] | None = None
    after: Callable[[Path], None] | None = None
    code: int | None = None  # None: any non-zero
    allow_new: tuple[str, ...] = ()  # paths (relative, glob) the failed run may leave
    marks: tuple = field(default_factory=tuple)

    def param(self):
        return pytest.param(self, id=self.id, marks=self.marks)


def snapshot(root: Path) -> dict[str, tuple[int, int, int]]:
    """Every path below ``root`` with (size, mtime_ns, mode): what a failed run must keep."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath, name)
            st = p.lstat()
            out[str(p.relative_to(root))] = (0 if p.is_dir() else st.st_size, 0 if p.is_dir() else st.st_mtime_ns, st.st_mode)
    return out


def run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    """Run ``neuroflood ARGV`` in this process; (exit code, stdout, stderr)."""
    from neuroflood.cli import main

    capsys.readouterr()
    try:
        code = main(argv)
    except SystemExit as e:  # argparse
        code = e.code if isinstance(e.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


def check_refused(case: Case, d: Path, capsys) -> str:
    """Run ``case`` in directory ``d`` and assert the refusal; return the error line."""
    if case.setup:
        case.setup(d)
    before = snapshot(d)
    argv = [a.replace("{d}", str(d)) for a in case.argv]
    code, _, err = run_cli(argv, capsys)
    assert "Traceback" not in err, f"traceback for {argv}:\n{err}"
    assert code != 0, f"{argv} exited 0; stderr: {err}"
    if case.code is not None:
        assert code == case.code, f"exit {code}, expected {case.code}: {err}"
    lines = [line for line in err.strip().splitlines() if line.strip() and not line.startswith(("usage:", " "))]
    errors = [line for line in lines if ERROR_LINE.match(line)]
    assert len(errors) == 1, f"expected one error line, got:\n{err}"
    assert re.search(case.message, errors[0], re.IGNORECASE), f"{errors[0]!r} does not match {case.message!r}"
    after = snapshot(d)
    changed = [p for p in before if p not in after or after[p] != before[p]]
    assert not changed, f"the failed run changed or removed {changed}"
    new = [p for p in after if p not in before and not any(Path(p).match(g) for g in case.allow_new)]
    assert not new, f"the failed run left {new}"
    if case.after:
        case.after(d)
    return errors[0]
