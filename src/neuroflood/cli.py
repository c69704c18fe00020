"""The ``neuroflood`` command: parse arguments, build a config, call the library.

Each stage registers its own subcommands (``register(subparsers)`` in ``<stage>/commands.py``)
so that this file stays a table of contents. A :class:`~neuroflood.errors.NeurofloodError`
is printed on one line (``neuroflood: error: …``) and exits with status 2; set
``NEUROFLOOD_DEBUG=1`` to see the traceback instead. SIGTERM (``kill``, a scheduler's time
limit) unwinds like Ctrl-C, so that temporary files of half-written outputs and checkpoints
are removed before the process exits with status 143.
"""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from . import __version__
from .errors import NeurofloodError

# Modules that provide ``register(subparsers)``, in the order their commands are listed.
COMMAND_MODULES = [
    "neuroflood.model.commands",  # import-tf, model-info
    "neuroflood.commands",  # synth
    "neuroflood.prepare.commands",  # prepare
    "neuroflood.train.commands",  # train
    "neuroflood.infer.commands",  # segment, consensus
    "neuroflood.agglomerate.commands",  # agglomerate
    "neuroflood.evaluate.commands",  # evaluate, report, view
    "neuroflood.mesh.commands",  # mesh
    "neuroflood.studies.commands",  # study
]


class _Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Show defaults, except where there is none (None, empty list) or the help gives it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "(default" in text or action.default in (None, [], False, argparse.SUPPRESS):
            return text
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="neuroflood",
        description=(
            "Flood-filling networks for neuron reconstruction in volume EM.\nAxis order is z,y,x everywhere; thresholds are probabilities."
        ),
        formatter_class=_Formatter,
    )
    parser.add_argument("--version", action="version", version=f"neuroflood {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def add_command(sub: argparse._SubParsersAction, name: str, help: str, description: str | None = None) -> argparse.ArgumentParser:
    """A subcommand parser with neuroflood's help formatting (defaults shown)."""
    return sub.add_parser(name, help=help, description=description or help, formatter_class=_Formatter)


# The signal that asked this process to stop, once one did. A handler's exception can be
# swallowed when the signal lands inside a weakref callback or ``__del__`` (Python prints
# "Exception ignored ..." and goes on); long loops call :func:`raise_if_terminated`, and
# :func:`main` exits 143 at the end, so that such a SIGTERM is never lost.
_terminated: int | None = None


def _exit_on_sigterm(signum: int, frame: object) -> None:
    global _terminated
    _terminated = signum
    raise SystemExit(128 + signum)


def raise_if_terminated() -> None:
    """Raise ``SystemExit(143)`` if SIGTERM arrived and its exception was swallowed."""
    if _terminated is not None:
        raise SystemExit(128 + _terminated)


@contextmanager
def sigterm_unwinds() -> Iterator[None]:
    """While inside, SIGTERM raises ``SystemExit(143)`` so that ``finally`` blocks run.

    Python's default SIGTERM action ends the process at once, leaving e.g. the temporary file
    of a checkpoint being written. Only the main thread can set handlers; elsewhere this does
    nothing. The previous handler is restored on the way out.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: Sequence[str] | None = None) -> int:
    global _terminated
    _terminated = None
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    args.argv = argv  # for commands that re-launch themselves on several workers
    try:
        with sigterm_unwinds():
            result = args.func(args)
    except NeurofloodError as e:
        if os.environ.get("NEUROFLOOD_DEBUG"):
            raise
        print(f"neuroflood: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("neuroflood: interrupted", file=sys.stderr)
        return 130
    except OSError as e:
        # The last line of defence: the file system refused (permissions, a full disk, a
        # file where a directory should be). Commands check their paths first; this keeps an
        # unforeseen case to one line too. NEUROFLOOD_DEBUG=1 shows the traceback.
        if os.environ.get("NEUROFLOOD_DEBUG") or e.errno is None:
            raise
        where = f" ({e.filename})" if e.filename else ""
        print(f"neuroflood: error: {e.strerror or e}{where}; {_os_error_hint(e)}", file=sys.stderr)
        return 2
    if _terminated is not None:  # a SIGTERM whose exception was swallowed on the way
        print("neuroflood: terminated", file=sys.stderr)
        return 128 + _terminated
    return int(result or 0)


def _os_error_hint(e: OSError) -> str:
    import errno

    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return "the disk is full: free space or write elsewhere, then run again"
    if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return "choose a location you can write to (or read, for inputs)"
    if e.errno == errno.ENOTDIR:
        return "a file stands where a directory is needed; check the path"
    if e.errno == errno.EISDIR:
        return "a directory stands where a file is needed; check the path"
    return "check the path and try again"


if __name__ == "__main__":
    sys.exit(main())
