"""Bad input to agglomerate: one line, non-zero exit, nothing written or changed
(tests/badinput.py). ``{NAME}`` placeholders are the shared inputs of the ``inputs`` fixture."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from agglomerate_helpers import oracle_model, scene
from badinput import Case, check_refused, run_cli
from neuroflood.volume import write_volume

_INPUTS: dict[str, str] = {}
SMALL = ["--radius", "8", "--analysis-radius", "4", "--min-segment-size", "0", "--min-contact", "1", "--max-distance", "4"]
SMALL += ["--set", "options.min_segment_size=10", "--set", "checkpoint_interval=0", "--no-progress", "--block-size", "12,12,12"]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, str]:
    from neuroflood.model import save_model

    t = tmp_path_factory.mktemp("agg-inputs")
    save_model(oracle_model(), t / "model")
    image, _, seg = scene()
    write_volume(f"{t}/v.h5:image", image)
    write_volume(f"{t}/v.h5:seg", seg)
    other = seg.copy()
    other[other == 4] = 3  # another segmentation of the same image
    write_volume(f"{t}/v.h5:other", other)
    write_volume(f"{t}/v.h5:small", seg[:20])
    write_volume(f"{t}/v.h5:zeros", np.zeros_like(seg))
    write_volume(f"{t}/v.h5:float", seg.astype(np.float32))
    _INPUTS.clear()
    _INPUTS.update({"model": str(t / "model"), "img": f"{t}/v.h5:image", "seg": f"{t}/v.h5:seg", "other": f"{t}/v.h5:other"})
    _INPUTS.update({"small": f"{t}/v.h5:small", "zeros": f"{t}/v.h5:zeros", "float": f"{t}/v.h5:float", "inputs": str(t)})
    return _INPUTS


def _argv(seg: str = "{seg}", out: str = "{d}/a.zarr/seg", model: str = "{model}", *extra: str) -> list[str]:
    return ["agglomerate", seg, "--model", model, "--image", "{img}", "--out", out, *SMALL, *extra]


def _agglomerated(seg: str):
    """An earlier agglomeration of ``seg`` at {d}/a.zarr/seg."""

    def setup(d: Path) -> None:
        from neuroflood.cli import main

        argv = [a.replace("{d}", str(d)) for a in _fill(_argv(seg))]
        assert main(argv) == 0

    return setup


_HOLDER = """
import sys
from neuroflood.outputs import exclusive
with exclusive(sys.argv[1], "--out (held by the test)"):
    print("held", flush=True)
    sys.stdin.read()
"""
_holders: list[subprocess.Popen] = []


def _held(d: Path) -> None:
    """Hold {d}/a.zarr/seg from another process, as a second run would."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    proc = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(d / "a.zarr" / "seg")], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env
    )
    _holders.append(proc)
    assert proc.stdout.readline().strip() == "held"


def _agglomerated_then_changed(d: Path) -> None:
    """An agglomeration of {d}/s.h5:seg, after which that file got another segmentation."""
    _, _, seg = scene()
    write_volume(f"{d}/s.h5:seg", seg)
    _agglomerated(f"{d}/s.h5:seg")(d)
    other = seg.copy()
    other[other == 4] = 3
    os.unlink(d / "s.h5")
    write_volume(f"{d}/s.h5:seg", other)


def _foreign_summary(d: Path) -> None:
    (d / "notes.json").write_text('{"mine": 1}\n')


CASES = [
    Case("shape-differs", _argv("{small}"), r"has shape \(20, 32, 32\) but the image .* \(24, 32, 32\)"),
    Case("missing-model", _argv(model="{d}/nomodel"), r"no checkpoint at .*nomodel"),
    Case("empty-segmentation", _argv("{zeros}"), r"no segments .*every voxel is 0"),
    Case("float-segmentation", _argv("{float}"), r"dtype float32, not integer ids"),
    Case("missing-segmentation", _argv("{d}/none.h5:seg"), r"none\.h5"),
    Case("out-not-zarr", _argv(out="{d}/out.h5:seg"), r"must be a zarr array spec DIR\.zarr/NAME"),
    Case("bad-iou", [*_argv(), "--min-iou", "1.5"], r"--min-iou 1\.5 must be a fraction"),
    Case("bad-radius", [*_argv(), "--radius", "2"], r"--radius 2,2,2 is smaller than the network's FOV radius"),
    Case("bad-bbox", [*_argv(), "--bbox", "0,0,0:30,32,32"], r"--bbox .* is outside the segmentation"),
    Case("foreign-summary", [*_argv(), "--summary", "{d}/notes.json"], r"not an agglomerate summary", setup=_foreign_summary),
    Case("out-of-another-segmentation", _argv("{other}"), r"holds an agglomeration of another segmentation", setup=_agglomerated("{seg}")),
    Case(
        "segmentation-changed-under-out",
        _argv("{d}/s.h5:seg"),
        r"another segmentation \(its path, segment ids or sizes differ\)",
        setup=_agglomerated_then_changed,
    ),
    Case(
        "out-with-other-options",
        [*_argv(), "--max-retry-iters", "2"],
        r"another request \(differs in: options\)",
        setup=_agglomerated("{seg}"),
    ),
    Case("out-with-other-merge-rule", [*_argv(), "--min-iou", "0.5"], r"other merge options.*--overwrite", setup=_agglomerated("{seg}")),
    Case("second-run-on-one-out", _argv(), r"another neuroflood run is writing --out", setup=_held),
]


def _fill(argv_or_case, inputs=None):
    inputs = inputs or _INPUTS
    if isinstance(argv_or_case, Case):
        c = argv_or_case
        return Case(c.id, _fill(c.argv, inputs), c.message, c.setup, c.after, c.code, c.allow_new, c.marks)
    out = []
    for a in argv_or_case:
        for k, v in inputs.items():
            a = a.replace("{" + k + "}", v)
        out.append(a)
    return out


@pytest.mark.parametrize("case", [c.param() for c in CASES])
def test_bad_input(case, inputs, tmp_path, capsys):
    try:
        check_refused(_fill(case, inputs), tmp_path, capsys)
    finally:
        while _holders:
            p = _holders.pop()
            p.stdin.close()
            p.wait(30)


def test_overwrite_redoes_only_the_merging(inputs, tmp_path, capsys):
    """--overwrite with another merge rule reuses the resegmentation (no FOV is run again)."""
    _agglomerated("{seg}")(tmp_path)
    argv = [a.replace("{d}", str(tmp_path)) for a in _fill([*_argv(), "--min-iou", "0.5", "--overwrite", "--summary", "{d}/s.json"])]
    code, out, err = run_cli(argv, capsys)
    assert code == 0, err
    import json

    s = json.loads((tmp_path / "s.json").read_text())
    assert s["pairs_run"] == 0 and s["merges"] == 2
