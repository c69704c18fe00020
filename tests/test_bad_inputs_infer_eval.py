"""Bad input to segment, consensus, evaluate, report, view and study: one line, non-zero exit,
nothing written or changed (tests/badinput.py).

``{d}`` is each case's own directory; ``{NAME}`` placeholders are the shared inputs made once
by the ``inputs`` fixture (a tiny hand-wired model, 24³ volumes, a training run directory).
"""

from __future__ import annotations

import dataclasses
import os
import socket
import subprocess
import sys
import threading
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import pytest

from badinput import Case, check_refused
from infer_helpers import bright_image, bright_model
from neuroflood.volume import write_volume

SHAPE = (24, 24, 24)
TINY_MODEL = "depth=1,features=4,fov=5,5,5,deltas=1,1,1"
ROOT_SKIP = pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root ignores file permissions")
CHUNK_XFAIL = ()


_INPUTS: dict[str, str] = {}  # filled by the fixture; setups read it too


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, str]:
    """Shared inputs by placeholder name (absolute paths and volume specs)."""
    from neuroflood.model import save_model

    t = tmp_path_factory.mktemp("inputs")
    save_model(bright_model(delta=3), t / "model")
    image = bright_image(SHAPE)
    labels = (image > 0).astype(np.uint32)
    write_volume(f"{t}/img.h5:image", image)
    bad = image.astype(np.float32)
    bad[3, 4, 5] = np.nan
    write_volume(f"{t}/nan.h5:image", bad)
    uni = t / "dïr with space"
    uni.mkdir()
    write_volume(f"{uni}/nän.h5:image", bad)
    bad = image.astype(np.float32)
    bad[10, 10, 10] = np.inf
    write_volume(f"{t}/inf.h5:image", bad)
    write_volume(f"{t}/img4d.h5:image", np.zeros((*SHAPE, 2), np.uint8))
    write_volume(f"{t}/gt.h5:labels", labels)
    write_volume(f"{t}/seg.zarr/seg", labels, chunks=(8, 8, 8))
    write_volume(f"{t}/seg20.h5:seg", labels[:20, :20, :20])
    write_volume(f"{t}/fseg.h5:seg", labels.astype(np.float32))
    write_volume(f"{t}/img20.h5:image", image[:20, :20, :20])
    write_volume(f"{t}/badseg.zarr/seg", labels, chunks=(8, 8, 8))
    write_volume(f"{t}/badimg.zarr/image", image, chunks=(8, 8, 8))
    for chunk in (t / "badseg.zarr" / "seg" / "1.1.1", t / "badimg.zarr" / "image" / "1.1.1"):
        assert chunk.is_file(), sorted(os.listdir(chunk.parent))
        chunk.write_bytes(b"\x8f garbage, not a compressed chunk \x00\xff" * 3)
    (t / "garbage.h5").write_bytes(b"not an HDF5 file at all")
    (t / "empty.h5").write_bytes(b"")
    (t / "afile").write_text("a regular file\n")
    run = t / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"step": 1, "time_s": 1.0, "split": "train", "loss": 0.5, "f1": 0.1}\n')
    _INPUTS.clear()
    _INPUTS.update(
        {
            "model": str(t / "model"),
            "img": f"{t}/img.h5:image",
            "nanimg": f"{t}/nan.h5:image",
            "uniimg": f"{uni}/nän.h5:image",
            "infimg": f"{t}/inf.h5:image",
            "img4d": f"{t}/img4d.h5:image",
            "img20": f"{t}/img20.h5:image",
            "gt": f"{t}/gt.h5:labels",
            "seg": f"{t}/seg.zarr/seg",
            "seg20": f"{t}/seg20.h5:seg",
            "fseg": f"{t}/fseg.h5:seg",
            "badseg": f"{t}/badseg.zarr/seg",
            "badimg": f"{t}/badimg.zarr/image",
            "garbage": f"{t}/garbage.h5:image",
            "empty": f"{t}/empty.h5:image",
            "run": str(run),
            "inputs": str(t),
        }
    )
    return _INPUTS


# -- setups: what a case's directory holds before the run --------------------------------------
def _afile(d: Path) -> None:
    (d / "afile").write_text("a regular file\n")


def _run_dir(metrics: str | bytes | None, config: str | None = None):
    def setup(d: Path) -> None:
        run = d / "run"
        run.mkdir()
        if isinstance(metrics, bytes):
            (run / "metrics.jsonl").write_bytes(metrics)
        elif metrics is not None:
            (run / "metrics.jsonl").write_text(metrics)
        if config is not None:
            (run / "config.json").write_text(config)

    return setup


GOOD_LOG = '{"step": 1, "time_s": 1.0, "split": "train", "loss": 0.5}\n{"step": 2, "time_s": 2.0, "split": "train", "loss": 0.4}\n'

# Holders a setup starts, stopped after the case's check (see test_bad_input).
_held = ExitStack()

_HOLDER = """
import sys
from neuroflood.outputs import exclusive
with exclusive(sys.argv[1], "--out (held by the test)"):
    print("held", flush=True)
    sys.stdin.read()
"""


def _hold(target: str) -> None:
    """Hold ``target`` from another process, as a second run would (exclusive() is re-entrant
    within one process) until the case is done."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    proc = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, target],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )

    def release() -> None:
        proc.stdin.close()
        proc.wait(30)

    _held.callback(release)
    assert proc.stdout.readline().strip() == "held", proc.stderr.read()


def _held_output(target: str, existing: str | None = None):
    """Hold ``{d}/target`` as another run would; ``existing`` is a volume written there first."""

    def setup(d: Path) -> None:
        if existing:
            write_volume(existing.replace("{d}", str(d)), np.arange(8, dtype=np.uint32).reshape(2, 2, 2))
        _hold(str(d / target))

    return setup


def _write_foreign_h5(d: Path) -> None:
    write_volume(f"{d}/foreign.h5:seg", np.ones((4, 4, 4), np.uint8))


def _readonly(d: Path) -> None:
    (d / "ro").mkdir()
    os.chmod(d / "ro", 0o555)


def _segment_other_request(d: Path) -> None:
    """An earlier segment run's output (default request) at {d}/prev.h5:seg."""
    from neuroflood.cli import main

    argv = [a.replace("{d}", str(d)) for a in _fill(Case("x", [*SEG, "--out", "{d}/prev.h5:seg"], ""), _INPUTS).argv]
    assert main(argv) == 0


SEG = ["segment", "--model", "{model}", "--image", "{img}", "--no-progress", "--set", "checkpoint_interval=0"]
SEGZ = [*SEG, "--out", "{d}/o.zarr/seg"]
SEGH = [*SEG, "--out", "{d}/o.h5:seg"]
STUDY = ["--model", TINY_MODEL, "--data-size", "24", "--threads", "1"]
BS = ["study", "batch-size", "--out", "{d}/study", "--global-batches", "4", "--fovs", "16", *STUDY]
LR = ["study", "lr-scaling", "--out", "{d}/study", "--workers", "1,2", "--lr-factors", "1", "--fovs", "16", "--jobs", "1", *STUDY]
OPT = ["study", "optimizers", "--out", "{d}/study", "--optimizers", "sgd", "--fovs", "16", *STUDY]
EVAL = ["evaluate", "{seg}", "{gt}", "--out", "{d}/ev"]
VIEW = ["view", "{img}"]

CASES = [
    # -- segment: options refused before any work --------------------------------------------
    Case(
        "seg-batch-size-huge",
        [*SEGH, "--set", "batch_size=1000000000"],
        r"batch_size 1000000000 needs about .* of memory.*use batch_size \d+ or less",
    ),
    Case("seg-batch-size-zero", [*SEGH, "--set", "batch_size=0"], r"batch_size.*greater than or equal to 1"),
    Case("seg-threads-zero", [*SEGH, "--threads", "0"], r"--threads 0 must be >= 1"),
    Case("seg-threads-negative", [*SEGH, "--threads", "-3"], r"--threads -3 must be >= 1"),
    Case("seg-nproc-zero", [*SEGZ, "--nproc-per-node", "0"], r"--nproc-per-node 0 must be >= 1"),
    Case(
        "seg-min-overlap-fraction-5",
        [*SEGZ, "--block-size", "16,16,16", "--min-overlap-fraction", "5"],
        r"--min-overlap-fraction 5\.0 must be a fraction in \(0, 1\]",
    ),
    Case(
        "seg-min-overlap-fraction-nan",
        [*SEGZ, "--block-size", "16,16,16", "--min-overlap-fraction", "nan"],
        r"--min-overlap-fraction nan must be a fraction",
    ),
    Case(
        "seg-min-overlap-voxels-zero",
        [*SEGZ, "--block-size", "16,16,16", "--min-overlap-voxels", "0"],
        r"--min-overlap-voxels 0 must be >= 1",
    ),
    Case("seg-block-size-zero", [*SEGZ, "--block-size", "0,0,0"], r"--block-size 0,0,0 must be positive on every axis"),
    Case("seg-block-size-negative", [*SEGZ, "--block-size=-4,16,16"], r"--block-size -4,16,16 must be positive"),
    Case("seg-block-size-two-values", [*SEGZ, "--block-size", "16,16"], r"--block-size .16,16. needs 3 values"),
    Case("seg-overlap-negative", [*SEGZ, "--block-size", "16,16,16", "--overlap=-1,0,0"], r"--overlap -1,0,0 must be >= 0"),
    Case(
        "seg-overlap-not-below-block",
        [*SEGZ, "--block-size", "8,8,8", "--overlap", "8,8,8"],
        r"overlap \(8, 8, 8\) must be smaller than the block size",
    ),
    Case("seg-handover-rounds-negative", [*SEGZ, "--block-size", "16,16,16", "--handover-rounds", "-1"], r"--handover-rounds -1 must be 0"),
    Case("seg-blockwise-h5-out", [*SEGH, "--block-size", "16,16,16"], r"blockwise output .* must be a zarr array spec"),
    # -- segment: --set keys, config files ----------------------------------------------------
    Case("seg-set-unknown-key", [*SEGH, "--set", "optionz.foo=1"], r"optionz: unknown option"),
    Case("seg-set-mistyped-key", [*SEGH, "--set", "options.move_threshhold=0.5"], r"move_threshhold.*unknown option"),
    Case("seg-set-wrong-type", [*SEGH, "--set", "batch_size=abc"], r"batch_size.*integer"),
    Case("seg-set-nan-threshold", [*SEGH, "--set", "options.move_threshold=NaN"], r"move_threshold"),
    Case("seg-set-image-mean-inf", [*SEGH, "--set", "image_mean=Infinity"], r"image_mean"),
    Case("seg-set-voxel-size-negative", [*SEGH, "--set", "voxel_size=[1,-1,1]"], r"voxel_size .* must be positive"),
    Case("seg-set-voxel-size-two-values", [*SEGH, "--set", "voxel_size=1,2"], r"voxel_size .* needs 3 values z,y,x"),
    Case("seg-set-empty-key", [*SEGH, "--set", "=3"], r"--set '=3' has an empty key"),
    Case("seg-set-not-key-value", [*SEGH, "--set", "options"], r"is not KEY=VALUE"),
    Case("seg-set-device-bogus", [*SEGH, "--set", "device=tpu"], r"device 'tpu' is not"),
    Case("seg-config-missing", [*SEGH, "--config", "{d}/nope.toml"], r"config file .*nope\.toml does not exist"),
    Case(
        "seg-config-corrupt",
        [*SEGH, "--config", "{d}/bad.toml"],
        r"cannot parse .*bad\.toml",
        setup=lambda d: (d / "bad.toml").write_text("batch_size = [1,\n"),
    ),
    Case(
        "seg-config-unknown-key",
        [*SEGH, "--config", "{d}/c.toml"],
        r"batch_sise: unknown option",
        setup=lambda d: (d / "c.toml").write_text("batch_sise = 2\n"),
    ),
    # -- segment: inputs ---------------------------------------------------------------------
    Case("seg-nan-image", [*SEG, "--image", "{nanimg}", "--out", "{d}/o.h5:seg"], r"1 NaN or infinite values.*z,y,x = \(3, 4, 5\)"),
    Case("seg-inf-image", [*SEG, "--image", "{infimg}", "--out", "{d}/o.zarr/seg"], r"NaN or infinite values.*\(10, 10, 10\)"),
    Case("seg-nan-image-unicode-path", [*SEG, "--image", "{uniimg}", "--out", "{d}/ö ut.h5:seg"], r"NaN or infinite"),
    Case("seg-image-4d", [*SEG, "--image", "{img4d}", "--out", "{d}/o.h5:seg"], r"3-D \(z, y, x\)"),
    Case("seg-image-missing", [*SEG, "--image", "{d}/nope.h5:image", "--out", "{d}/o.h5:seg"], r"nope\.h5 does not exist"),
    Case("seg-image-is-dir", [*SEG, "--image", "{d}", "--out", "{d}/o.h5:seg"], r"unsupported volume spec|is a directory"),
    Case("seg-image-garbage", [*SEG, "--image", "{garbage}", "--out", "{d}/o.h5:seg"], r"cannot open .*garbage\.h5"),
    Case("seg-image-empty-file", [*SEG, "--image", "{empty}", "--out", "{d}/o.h5:seg"], r"cannot open .*empty\.h5"),
    Case(
        "seg-image-corrupt-zarr-chunk",
        [*SEG, "--image", "{badimg}", "--out", "{d}/o.h5:seg"],
        r"badimg\.zarr/image.*chunk.*1\.1\.1",
        marks=CHUNK_XFAIL,
    ),
    Case("seg-model-missing", [*SEG[:2], "{d}/nomodel", *SEG[3:], "--out", "{d}/o.h5:seg"], r"nomodel"),
    Case("seg-model-is-file", [*SEG[:2], "{d}/afile", *SEG[3:], "--out", "{d}/o.h5:seg"], r"afile", setup=_afile),
    Case("seg-bbox-reversed", [*SEGH, "--bbox", "10,10,10:5,5,5"], r"bounding box '10,10,10:5,5,5' is empty"),
    Case("seg-bbox-outside", [*SEGH, "--bbox", "0,0,0:30,24,24"], r"outside the image"),
    Case("seg-bbox-negative", [*SEGH, "--bbox=-2,0,0:10,10,10"], r"outside the image"),
    Case("seg-bbox-outside-blockwise", [*SEGZ, "--block-size", "16,16,16", "--bbox", "0,0,0:30,24,24"], r"outside the image"),
    # -- segment: outputs --------------------------------------------------------------------
    Case("seg-summary-is-dir", [*SEGH, "--summary", "{d}"], r"--summary .* is a directory; give a file path"),
    Case("seg-summary-under-file", [*SEGH, "--summary", "{d}/afile/s.json"], r"afile is a file, not a directory", setup=_afile),
    Case("seg-out-under-file", [*SEG, "--out", "{d}/afile/o.h5:seg"], r"afile is a file, not a directory", setup=_afile),
    Case(
        "seg-out-zarr-under-file",
        [*SEG, "--out", "{d}/afile/o.zarr/seg", "--block-size", "16,16,16"],
        r"afile is a file, not a directory",
        setup=_afile,
    ),
    Case("seg-out-not-a-volume", [*SEG, "--out", "{d}/o.txt"], r"not an HDF5, zarr or npz spec"),
    Case(
        "seg-out-other-request",
        [*SEG, "--out", "{d}/prev.h5:seg", "--set", "options.min_segment_size=60"],
        r"already holds a segmentation of another request \(differs in: request\.options\.min_segment_size\)",
        setup=_segment_other_request,
    ),
    Case("seg-out-foreign-file", [*SEG, "--out", "{d}/foreign.h5:seg"], r"was not written by neuroflood segment", setup=_write_foreign_h5),
    Case(
        "seg-out-held",
        [*SEG, "--out", "{d}/held.h5:seg", "--overwrite"],
        r"another neuroflood run is writing --out .*held\.h5",
        setup=_held_output("held.h5", "{d}/held.h5:seg"),
    ),
    Case(
        "seg-out-held-blockwise",
        [*SEGZ, "--block-size", "16,16,16"],
        r"another neuroflood run is writing --out .*o\.zarr/seg",
        setup=_held_output("o.zarr/seg", "{d}/o.zarr/other"),
    ),
    Case(
        "seg-out-held-launcher",
        [*SEGZ, "--nproc-per-node", "2"],
        r"another neuroflood run is writing --out .*o\.zarr/seg",
        setup=_held_output("o.zarr/seg", "{d}/o.zarr/other"),
    ),
    Case("seg-out-read-only", [*SEG, "--out", "{d}/ro/o.h5:seg"], r"permission denied", setup=_readonly, marks=(ROOT_SKIP,)),
    # -- consensus ---------------------------------------------------------------------------
    Case(
        "cons-shape-mismatch",
        ["consensus", "{seg}", "{seg20}", "--out", "{d}/c.h5:seg"],
        r"shape \(24, 24, 24\) and .*seg20\.h5:seg \(20, 20, 20\); give two segmentations of one box",
    ),
    Case("cons-float-segmentation", ["consensus", "{seg}", "{fseg}", "--out", "{d}/c.h5:seg"], r"float32, not integer ids"),
    Case(
        "cons-split-min-size-negative",
        ["consensus", "{seg}", "{seg}", "--out", "{d}/c.h5:seg", "--split-min-size", "-1"],
        r"--split-min-size -1 must be >= 0",
    ),
    Case(
        "cons-out-under-file",
        ["consensus", "{seg}", "{seg}", "--out", "{d}/afile/c.h5:seg"],
        r"afile is a file, not a directory",
        setup=_afile,
    ),
    Case("cons-input-missing", ["consensus", "{seg}", "{d}/nope.h5:seg", "--out", "{d}/c.h5:seg"], r"nope\.h5 does not exist"),
    # -- evaluate ----------------------------------------------------------------------------
    Case("eval-errors-negative", [*EVAL, "--errors", "-1"], r"--errors -1 must be >= 0"),
    Case("eval-min-error-voxels-zero", [*EVAL, "--min-error-voxels", "0"], r"--min-error-voxels 0 must be >= 1"),
    Case("eval-erl-dust-negative", [*EVAL, "--erl-dust-threshold", "-5"], r"--erl-dust-threshold -5 must be >= 0"),
    Case(
        "eval-out-is-file", ["evaluate", "{seg}", "{gt}", "--out", "{d}/afile"], r"--out .*afile is a file, not a directory", setup=_afile
    ),
    Case("eval-out-under-file", ["evaluate", "{seg}", "{gt}", "--out", "{d}/afile/out"], r"afile is a file, not a directory", setup=_afile),
    Case(
        "eval-out-read-only",
        ["evaluate", "{seg}", "{gt}", "--out", "{d}/ro/out"],
        r"permission denied",
        setup=_readonly,
        marks=(ROOT_SKIP,),
    ),
    Case("eval-shape-mismatch", ["evaluate", "{seg20}", "{gt}", "--out", "{d}/ev"], r"shape"),
    Case("eval-float-segmentation", ["evaluate", "{fseg}", "{gt}", "--out", "{d}/ev"], r"float32"),
    Case("eval-image-shape-mismatch", [*EVAL, "--image", "{img20}"], r"shape"),
    Case("eval-bbox-outside", [*EVAL, "--bbox", "0,0,0:30,24,24"], r"--bbox .* reaches outside ground truth"),
    Case("eval-bbox-reversed", [*EVAL, "--bbox", "10,10,10:5,5,5"], r"is empty"),
    Case("eval-at-outside", [*EVAL, "--at", "99,0,0"], r"--at 99,0,0 lies outside"),
    Case("eval-gt-missing", ["evaluate", "{seg}", "{d}/nope.h5:labels", "--out", "{d}/ev"], r"nope\.h5 does not exist"),
    Case("eval-seg-is-dir", ["evaluate", "{d}", "{gt}", "--out", "{d}/ev"], r"unsupported volume spec|is a directory"),
    Case(
        "eval-corrupt-zarr-chunk",
        ["evaluate", "{badseg}", "{gt}", "--out", "{d}/ev"],
        r"badseg\.zarr/seg.*chunk.*1\.1\.1",
        marks=CHUNK_XFAIL,
    ),
    # -- report ------------------------------------------------------------------------------
    Case("report-run-is-file", ["report", "{d}/afile"], r"afile is a file, not a run directory", setup=_afile),
    Case("report-run-missing", ["report", "{d}/nope"], r"run directory .*nope does not exist"),
    Case(
        "report-config-is-list", ["report", "{d}/run"], r"config\.json holds a JSON list, not an object", setup=_run_dir(GOOD_LOG, "[1, 2]")
    ),
    Case("report-config-corrupt", ["report", "{d}/run"], r"config\.json is not valid JSON", setup=_run_dir(GOOD_LOG, "{")),
    Case("report-metrics-missing", ["report", "{d}/run"], r"metrics\.jsonl does not exist", setup=_run_dir(None)),
    Case("report-metrics-empty", ["report", "{d}/run"], r"has no records yet", setup=_run_dir("")),
    Case("report-metrics-garbage-line", ["report", "{d}/run"], r"line 1 is not JSON", setup=_run_dir("garbage\n" + GOOD_LOG)),
    Case("report-metrics-binary", ["report", "{d}/run"], r"cannot read .*metrics\.jsonl", setup=_run_dir(b"\xff\xfe\x00garbage\n" * 3)),
    Case("report-out-under-file", ["report", "{run}", "--out", "{d}/afile/out"], r"afile is a file, not a directory", setup=_afile),
    Case("report-out-read-only", ["report", "{run}", "--out", "{d}/ro/out"], r"permission denied", setup=_readonly, marks=(ROOT_SKIP,)),
    # -- view --------------------------------------------------------------------------------
    Case("view-port-too-large", [*VIEW, "--port", "70000"], r"--port 70000 is not a TCP port"),
    Case("view-port-negative", [*VIEW, "--port=-1"], r"--port -1 is not a TCP port"),
    Case("view-bind-bad-address", [*VIEW, "--bind", "999.1.1.1"], r"--bind '999\.1\.1\.1' is not an address of this machine"),
    Case("view-image-missing", ["view", "{d}/nope.h5:image"], r"nope\.h5 does not exist"),
    Case("view-voxel-size-zero", [*VIEW, "--voxel-size", "0,1,1"], r"--voxel-size '0,1,1' is not three positive numbers"),
    Case("view-max-memory-negative", [*VIEW, "--max-memory-mb=-1"], r"--max-memory-mb -1\.0 must be >= 0"),
    Case("view-float-segmentation", [*VIEW, "{fseg}"], r"float32, not integer labels"),
    # -- study -------------------------------------------------------------------------------
    Case("study-evaluations-zero", [*BS, "--evaluations", "0"], r"--evaluations must be >= 1, got 0"),
    Case("study-out-is-file", [*BS[:3], "{d}/afile", *BS[4:]], r"--out .*afile is a file, not a directory", setup=_afile),
    Case("study-out-under-file", [*BS[:3], "{d}/afile/out", *BS[4:]], r"afile is a file, not a directory", setup=_afile),
    Case("study-out-read-only", [*BS[:3], "{d}/ro/out", *BS[4:]], r"permission denied", setup=_readonly, marks=(ROOT_SKIP,)),
    Case("study-threads-zero", [*BS, "--threads", "0"], r"--threads must be >= 1, got 0"),
    Case("study-batch-size-zero", [*BS, "--batch-size", "0"], r"--batch-size must be >= 1, got 0"),
    Case("study-warmup-fraction-too-big", [*BS, "--warmup-fraction", "1.5"], r"--warmup-fraction 1\.5 must be a fraction in \[0, 1\)"),
    Case("study-base-lr-negative", [*LR, "--base-lr=-1"], r"--base-lr -1\.0 must be a positive learning rate"),
    Case("study-base-lr-nan", [*LR, "--base-lr", "nan"], r"--base-lr nan must be a positive learning rate"),
    Case("study-fovs-below-one-step", [*LR[:9], "4", *LR[10:]], r"--fovs 4 is less than one step"),
    Case("study-fovs-below-global-batch", [*BS[:7], "2", *BS[8:]], r"--fovs 2 is less than one step"),
    Case("study-optimizer-unknown", [*LR, "--optimizer", "lamb"], r"unknown --optimizer 'lamb'"),
    Case("study-learning-rates-unknown", [*OPT, "--learning-rates", "lamb=0.1"], r"--learning-rates names unknown optimizer 'lamb'"),
    Case("study-learning-rates-zero", [*OPT, "--learning-rates", "sgd=0"], r"--learning-rates sgd=0\.0 must be a positive"),
    Case("study-target-accuracy-zero", [*OPT, "--target-accuracy", "0"], r"--target-accuracy 0\.0 must be a fraction in \(0, 1\]"),
    Case("study-data-size-too-small", [*BS, "--data-size", "6"], r"--data-size 6 is too small"),
    Case("study-seed-negative", [*BS, "--seed=-1"], r"--seed must be >= 0, got -1"),
    Case(
        "study-scaling-steps",
        ["study", "scaling", "--out", "{d}/study", "--steps", "1", "--skip-steps", "1", *STUDY],
        r"--steps 1 must exceed --skip-steps 1",
    ),
]


def _fill(case: Case, inputs: dict[str, str]) -> Case:
    def fill(arg: str) -> str:
        for key, value in inputs.items():
            arg = arg.replace("{" + key + "}", value)
        return arg

    return dataclasses.replace(case, argv=[fill(a) for a in case.argv])


@pytest.mark.parametrize("case", [c.param() for c in CASES])
def test_bad_input(case, inputs, tmp_path, capsys):
    threads = set(threading.enumerate())
    try:
        check_refused(_fill(case, inputs), tmp_path, capsys)
    finally:
        _held.close()  # locks and sockets of the setup
    # no server (or any other) thread outlives a refused command; tqdm's monitor, a daemon
    # started with the process's first progress bar, is not the command's
    assert not [t for t in threading.enumerate() if t not in threads and t.is_alive() and type(t).__name__ != "TMonitor"]


def test_view_port_in_use(inputs, tmp_path, capsys):
    """A port another program listens on: refused on one line, and no server thread started."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        threads = set(threading.enumerate())
        case = Case("view-port-in-use", [*VIEW, "--port", str(port)], rf"port {port} on 127\.0\.0\.1 is in use by another program")
        check_refused(_fill(case, inputs), tmp_path, capsys)
        assert not [t for t in threading.enumerate() if t not in threads and t.is_alive()]


def test_held_output_is_left_untouched(inputs, tmp_path, capsys):
    """A second segment run on an output that another run holds is refused at once, and the
    output keeps its bytes; once the holder lets go, the same command runs."""
    from badinput import run_cli

    out = tmp_path / "o.h5"
    argv = [a.replace("{d}", str(tmp_path)) for a in _fill(Case("x", [*SEG, "--out", f"{out}:seg"], ""), inputs).argv]
    write_volume(f"{out}:seg", np.ones((2, 2, 2), np.uint8))
    before = out.read_bytes()
    try:
        _hold(str(out))
        code, _, err = run_cli([*argv, "--overwrite"], capsys)
        assert code == 2 and "another neuroflood run is writing" in err and err.count("\n") == 1, err
        assert out.read_bytes() == before
    finally:
        _held.close()
    code, _, err = run_cli([*argv, "--overwrite"], capsys)
    assert code == 0, err
    assert out.read_bytes() != before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.h5"]  # the lock file is gone
