"""Bad-input sweep: synth, export, prepare, import-tf and demo (see tests/badinput.py).

Every row feeds one bad input through the command line and checks the one-line message, the
non-zero exit and that nothing in the case's directory was changed, removed or left behind —
in particular that no command replaces a file or directory it did not create itself.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from badinput import Case, check_refused, run_cli
from neuroflood.outputs import container_path, exclusive
from neuroflood.volume import write_volume

CKPT = Path(__file__).resolve().parents[1].parent / "shared" / "models" / "fib25" / "model.ckpt-27465036"
PREP = ["--lom-radius", "4,4,4", "--margin", "4,4,4", "--min-size", "10", "--allow-missing-classes", "--no-progress"]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """Inputs shared by the rows: a small labelled volume and odd datasets beside it."""
    from neuroflood.synthetic import make_em_volume

    d = tmp_path_factory.mktemp("inputs")
    image, labels = make_em_volume((24, 24, 24), seed=1)
    write_volume(f"{d}/v.h5:image", image)
    write_volume(f"{d}/v.h5:labels", labels)
    write_volume(f"{d}/v.zarr/labels", labels)
    write_volume(f"{d}/small.h5:image", image[:20])
    with h5py.File(d / "odd.h5", "w") as f:
        f.create_dataset("empty", shape=(0, 24, 24), dtype=np.uint8)
        f.create_dataset("text", data="hello")
        f.create_dataset("scalar", data=3)
        f.create_dataset("flat", data=np.zeros((24, 24), np.uint8))
        f.create_dataset("floats", data=np.zeros((24, 24, 24), np.float32))
    write_volume(f"{d}/corrupt.zarr/a", np.arange(16**3, dtype=np.uint32).reshape(16, 16, 16), chunks=(8, 8, 8))
    (d / "corrupt.zarr" / "a" / "0.0.0").write_bytes(b"\x00garbage, not a compressed chunk" * 3)
    (d / "garbage.h5").write_bytes(b"this is not HDF5" * 10)
    (d / "empty.index").write_bytes(b"")
    return d


def _user_file(name: str, text: str = "a user's notes\n"):
    """Setup: a file the command did not create."""

    def setup(d: Path) -> None:
        (d / name).parent.mkdir(parents=True, exist_ok=True)
        (d / name).write_text(text)

    return setup


def _user_dir(name: str):
    """Setup: a directory of unrelated files."""

    def setup(d: Path) -> None:
        (d / name).mkdir()
        (d / name / "precious.txt").write_text("do not delete\n")
        (d / name / "sub").mkdir()
        (d / name / "sub" / "more.dat").write_bytes(b"\x01\x02")

    return setup


def _user_h5(name: str):
    def setup(d: Path) -> None:
        with h5py.File(d / name, "w") as f:
            f.create_dataset("image", data=np.full((8, 8, 8), 7, np.uint8))
            f.create_dataset("labels", data=np.ones((8, 8, 8), np.uint64))

    return setup


def _export_target(name: str):
    """Setup: a target that is the user's, not an earlier export (an HDF5 dataset or zarr)."""

    def setup(d: Path) -> None:
        write_volume(f"{d}/{name}", np.ones((8, 8, 8), np.uint8))

    return setup


def _cases(inputs: Path) -> list[Case]:
    v, lab = f"{inputs}/v.h5", f"{inputs}/v.h5:labels"
    odd = f"{inputs}/odd.h5"
    return [
        # -- synth ---------------------------------------------------------------------
        Case("synth-noise-nan", ["synth", "--shape", "16,16,16", "--noise", "nan", "--out", "{d}/s.h5"], r"noise nan"),
        Case("synth-noise-negative", ["synth", "--shape", "16,16,16", "--noise", "-5", "--out", "{d}/s.h5"], r"noise -5"),
        Case("synth-noise-inf", ["synth", "--shape", "16,16,16", "--noise", "inf", "--out", "{d}/s.h5"], r"noise inf"),
        Case("synth-seed-negative", ["synth", "--shape", "16,16,16", "--seed", "-1", "--out", "{d}/s.h5"], r"seed -1"),
        Case("synth-density-negative", ["synth", "--shape", "16,16,16", "--density", "-1", "--out", "{d}/s.h5"], r"density -1"),
        Case("synth-density-zero", ["synth", "--shape", "16,16,16", "--density", "0", "--out", "{d}/s.h5"], r"density 0"),
        Case(
            "synth-contrast-above-one",
            ["synth", "--shape", "16,16,16", "--membrane-contrast", "2", "--out", "{d}/s.h5"],
            r"membrane_contrast 2",
        ),
        Case("synth-shape-huge", ["synth", "--shape", "5000,5000,5000", "--out", "{d}/s.h5"], r"needs about .* GiB"),
        Case("synth-shape-two-values", ["synth", "--shape", "16,16", "--out", "{d}/s.h5"], r"needs 3 values"),
        Case("synth-shape-tiny", ["synth", "--shape", "4,4,4", "--out", "{d}/s.h5"], r">= 8"),
        Case("synth-shape-words", ["synth", "--shape", "a,b,c", "--out", "{d}/s.h5"], r"not a comma-separated list of integers"),
        Case("synth-out-user-file", ["synth", "--shape", "16,16,16", "--out", "{d}/mine.h5"], r"exists", setup=_user_h5("mine.h5")),
        Case(
            "synth-overwrite-user-file",
            ["synth", "--shape", "16,16,16", "--out", "{d}/mine.h5", "--overwrite"],
            r"not written by neuroflood synth",
            setup=_user_h5("mine.h5"),
        ),
        Case(
            "synth-overwrite-not-hdf5",
            ["synth", "--shape", "16,16,16", "--out", "{d}/notes.h5", "--overwrite"],
            r"not written by neuroflood synth",
            setup=_user_file("notes.h5"),
        ),
        Case("synth-out-zarr", ["synth", "--shape", "16,16,16", "--out", "{d}/s.zarr"], r"must be an HDF5 file"),
        Case(
            "synth-out-directory",
            ["synth", "--shape", "16,16,16", "--out", "{d}/dir.h5", "--overwrite"],
            r"not written by neuroflood synth",
            setup=_user_dir("dir.h5"),
        ),
        Case(
            "synth-out-under-a-file",
            ["synth", "--shape", "16,16,16", "--out", "{d}/afile/s.h5"],
            r"is a file, not a directory",
            setup=_user_file("afile"),
        ),
        # -- export --------------------------------------------------------------------
        Case("export-block-zero", ["export", lab, "{d}/o.zarr/a", "--block", "0,0,0"], r"3 positive sizes"),
        Case("export-block-negative", ["export", lab, "{d}/o.zarr/a", "--block=-1,2,2"], r"3 positive sizes"),
        Case("export-block-two-values", ["export", lab, "{d}/o.zarr/a", "--block", "4,4"], r"needs 3 values"),
        Case("export-src-missing", ["export", f"{inputs}/nope.h5:labels", "{d}/o.zarr/a"], r"does not exist"),
        Case("export-src-no-dataset", ["export", f"{v}:nope", "{d}/o.zarr/a"], r"no dataset 'nope'"),
        Case("export-src-empty", ["export", f"{odd}:empty", "{d}/o.zarr/a"], r"non-empty 3-d"),
        Case("export-src-string", ["export", f"{odd}:text", "{d}/o.zarr/a"], r"non-empty 3-d"),
        Case("export-src-scalar", ["export", f"{odd}:scalar", "{d}/o.zarr/a"], r"non-empty 3-d"),
        Case("export-src-2d", ["export", f"{odd}:flat", "{d}/o.zarr/a"], r"non-empty 3-d"),
        Case("export-src-garbage-file", ["export", f"{inputs}/garbage.h5:x", "{d}/o.zarr/a"], r"cannot open"),
        Case(
            "export-src-corrupt-chunk",
            ["export", f"{inputs}/corrupt.zarr/a", "{d}/o.h5:a", "--block", "8,8,8"],
            r"cannot read .*corrupt.zarr/a: chunk 0.0.0 of region \[0:8, 0:8, 0:8\]",
        ),
        Case("export-dst-exists", ["export", lab, "{d}/t.h5:x"], r"already exists", setup=_export_target("t.h5:x")),
        Case(
            "export-overwrite-user-dataset",
            ["export", lab, "{d}/t.h5:x", "--overwrite"],
            r"not written by neuroflood export",
            setup=_export_target("t.h5:x"),
        ),
        Case(
            "export-overwrite-user-zarr",
            ["export", lab, "{d}/t.zarr/x", "--overwrite"],
            r"not written by neuroflood export",
            setup=_export_target("t.zarr/x"),
        ),
        Case(
            "export-overwrite-user-dir-precomputed",
            ["export", lab, "precomputed://{d}/pc", "--overwrite"],
            r"not written by neuroflood export",
            setup=_user_dir("pc"),
        ),
        Case(
            "export-overwrite-user-npy",
            ["export", lab, "{d}/t.npy", "--overwrite"],
            r"not written by neuroflood export",
            setup=lambda d: np.save(d / "t.npy", np.zeros(3)),
        ),
        Case("export-dst-not-hdf5", ["export", lab, "{d}/notes.h5:x"], r"not an HDF5 file", setup=_user_file("notes.h5")),
        Case("export-dst-unsupported", ["export", lab, "{d}/out.txt"], r"unsupported volume spec"),
        Case("export-dst-zarr-without-name", ["export", lab, "{d}/o.zarr"], r"DIR.zarr/NAME"),
        Case("export-dst-same-h5-file", ["export", lab, f"{v}:copy"], r"export into another file"),
        Case("export-dst-under-a-file", ["export", lab, "{d}/afile/o.h5:x"], r"is a file, not a directory", setup=_user_file("afile")),
        # -- prepare -------------------------------------------------------------------
        Case(
            "prepare-overwrite-data-file",
            ["prepare", "--labels", lab, "--out", "{d}/data.h5", "--overwrite", *PREP],
            r"not written by neuroflood prepare",
            setup=_user_h5("data.h5"),
        ),
        Case(
            "prepare-overwrite-user-dir",
            ["prepare", "--labels", lab, "--out", "{d}/results", "--overwrite", *PREP],
            r"not written by neuroflood prepare",
            setup=_user_dir("results"),
        ),
        Case(
            "prepare-overwrite-own-input",
            ["prepare", "--labels", "{d}/in/v.zarr/labels", "--out", "{d}/in", "--overwrite", *PREP],
            r"holds an input of this run",
            setup=lambda d: write_volume(f"{d}/in/v.zarr/labels", np.ones((24, 24, 24), np.uint64)),
        ),
        Case(
            "prepare-overwrite-cwd",
            ["prepare", "--labels", lab, "--out", "{d}", "--overwrite", *PREP],
            r"not written by neuroflood prepare",
        ),
        Case(
            "prepare-out-exists",
            ["prepare", "--labels", lab, "--out", "{d}/results", *PREP],
            r"exists; choose another output",
            setup=_user_dir("results"),
        ),
        Case("prepare-out-empty-string", ["prepare", "--labels", lab, "--out", "", *PREP], r"--out is empty"),
        Case(
            "prepare-out-under-a-file",
            ["prepare", "--labels", lab, "--out", "{d}/afile/prep", *PREP],
            r"is a file, not a directory",
            setup=_user_file("afile"),
        ),
        Case("prepare-tfrecord-directory", ["prepare", "--from-tfrecord", "{d}", "--out", "{d}/p"], r"is a directory"),
        Case("prepare-tfrecord-missing", ["prepare", "--from-tfrecord", "{d}/nope.gz", "--out", "{d}/p"], r"does not exist"),
        Case(
            "prepare-tfrecord-garbage",
            ["prepare", "--from-tfrecord", "{d}/notes.gz", "--out", "{d}/p"],
            r"notes.gz",
            setup=_user_file("notes.gz"),
        ),
        Case(
            "prepare-whitelist-negative",
            ["prepare", "--labels", lab, "--id-whitelist", "99999,-3", "--out", "{d}/p", *PREP],
            r"id_whitelist.*-3",
        ),
        Case("prepare-whitelist-words", ["prepare", "--labels", lab, "--id-whitelist", "a,b", "--out", "{d}/p", *PREP], r"id-whitelist"),
        Case("prepare-labels-missing", ["prepare", "--labels", f"{inputs}/nope.h5:labels", "--out", "{d}/p", *PREP], r"does not exist"),
        Case("prepare-labels-float", ["prepare", "--labels", f"{odd}:floats", "--out", "{d}/p", *PREP], r"float|integer"),
        Case(
            "prepare-image-shape-mismatch",
            ["prepare", "--labels", lab, "--image", f"{inputs}/small.h5:image", "--out", "{d}/p", *PREP],
            r"has shape",
        ),
        Case("prepare-lom-radius-negative", ["prepare", "--labels", lab, "--out", "{d}/p", *PREP, "--lom-radius=-1,4,4"], r"lom_radius"),
        Case("prepare-min-size-negative", ["prepare", "--labels", lab, "--out", "{d}/p", *PREP, "--min-size=-5"], r"min_size"),
        Case("prepare-no-labels", ["prepare", "--out", "{d}/p"], r"at least one labelled volume"),
        # -- import-tf -----------------------------------------------------------------
        Case("import-tf-into-user-dir", ["import-tf", str(CKPT), "{d}/models"], r"exists", setup=_user_dir("models")),
        Case(
            "import-tf-overwrite-user-dir",
            ["import-tf", str(CKPT), "{d}/models", "--overwrite"],
            r"not written by neuroflood import-tf",
            setup=_user_dir("models"),
        ),
        Case("import-tf-into-data-file", ["import-tf", str(CKPT), "{d}/vol.h5"], r"exists", setup=_user_h5("vol.h5")),
        Case(
            "import-tf-overwrite-data-file",
            ["import-tf", str(CKPT), "{d}/vol.h5", "--overwrite"],
            r"not written by neuroflood import-tf",
            setup=_user_h5("vol.h5"),
        ),
        Case("import-tf-empty-out", ["import-tf", str(CKPT), ""], r"output directory is empty"),
        Case("import-tf-prefix-missing", ["import-tf", "{d}/nope/model.ckpt-1", "{d}/m"], r"nope"),
        Case("import-tf-empty-index", ["import-tf", f"{inputs}/empty", "{d}/m"], r"empty"),
        # -- demo ----------------------------------------------------------------------
        Case("demo-out-is-file", ["demo", "--size", "tiny", "--out", "{d}/notes.txt"], r"is a file", setup=_user_file("notes.txt")),
        Case("demo-out-not-empty", ["demo", "--size", "tiny", "--out", "{d}/results"], r"not empty", setup=_user_dir("results")),
        Case(
            "demo-overwrite-user-dir",
            ["demo", "--size", "tiny", "--out", "{d}/results", "--overwrite"],
            r"not written by neuroflood demo",
            setup=_user_dir("results"),
        ),
        Case("demo-workers-zero", ["demo", "--size", "tiny", "--workers", "0", "--out", "{d}/demo"], r"--workers 0"),
        Case("demo-fib25-wrong-folder", ["demo", "--fib25", "{d}", "--out", "{d}/demo"], r"does not hold data/fib25"),
    ]


def pytest_generate_tests(metafunc):
    if "case" in metafunc.fixturenames:
        # Paths to the shared inputs are filled in per test through the `data` fixture.
        rows = _cases(Path("/INPUTS"))
        metafunc.parametrize("case", [c.param() for c in rows])


def test_bad_input(case: Case, data: Path, tmp_path: Path, capsys):
    case = _with_inputs(case, data)
    before = {p: p.stat().st_mtime_ns for p in data.rglob("*") if p.is_file()}
    check_refused(case, tmp_path, capsys)
    after = {p: p.stat().st_mtime_ns for p in data.rglob("*") if p.is_file()}
    assert before == after, "a failed run changed one of its inputs"


def _with_inputs(case: Case, inputs: Path) -> Case:
    from dataclasses import replace

    return replace(case, argv=[a.replace("/INPUTS", str(inputs)) for a in case.argv])


def test_the_sweep_is_large_enough():
    assert len(_cases(Path("/INPUTS"))) >= 60


# -- replacing only what a command made ------------------------------------------------------


def test_overwrite_replaces_an_earlier_output_of_the_same_command(data, tmp_path, capsys):
    lab = f"{data}/v.h5:labels"
    for argv in (
        ["synth", "--shape", "16,16,16", "--out", f"{tmp_path}/s.h5"],
        ["prepare", "--labels", lab, "--out", f"{tmp_path}/prep", *PREP],
        ["export", lab, f"{tmp_path}/e.zarr/a"],
        ["export", lab, f"{tmp_path}/e.h5:a"],
        ["export", lab, f"precomputed://{tmp_path}/e_pc"],
        ["export", lab, f"{tmp_path}/e.n5/a"],
    ):
        assert run_cli(argv, capsys)[0] == 0, argv
        assert run_cli([*argv, "--overwrite"], capsys)[0] == 0, argv
        assert run_cli(argv, capsys)[0] == 2, argv  # and without --overwrite, refused
    # No temporary files or lock files are left beside the outputs.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e.h5", "e.n5", "e.zarr", "e_pc", "prep", "s.h5"]


def test_import_tf_overwrites_only_its_own_model(tmp_path, capsys):
    out = tmp_path / "m"
    assert run_cli(["import-tf", str(CKPT), str(out)], capsys)[0] == 0
    assert run_cli(["import-tf", str(CKPT), str(out), "--overwrite"], capsys)[0] == 0
    assert {p.name for p in out.iterdir()} >= {"config.json", "model.safetensors"}


def test_the_inputs_of_export_survive_overwriting_an_export_of_themselves(data, tmp_path, capsys):
    """Exporting an earlier export onto itself reads and writes one array: the copy stays whole."""
    lab = f"{data}/v.h5:labels"
    dst = f"{tmp_path}/e.zarr/a"
    assert run_cli(["export", lab, dst], capsys)[0] == 0
    assert run_cli(["export", dst, dst, "--overwrite", "--block", "8,8,8"], capsys)[0] == 0
    from neuroflood.volume import open_volume

    assert np.array_equal(open_volume(dst)[...], open_volume(lab)[...])


# -- two runs on one output ------------------------------------------------------------------


@pytest.mark.parametrize("command", ["synth", "prepare", "export", "import-tf", "demo"])
def test_a_second_run_on_a_held_output_is_refused(command, data, tmp_path, capsys):
    out = tmp_path / "out"
    argv = {
        "synth": ["synth", "--shape", "16,16,16", "--out", f"{out}.h5"],
        "prepare": ["prepare", "--labels", f"{data}/v.h5:labels", "--out", str(out), *PREP],
        "export": ["export", f"{data}/v.h5:labels", f"{out}.zarr/a"],
        "import-tf": ["import-tf", str(CKPT), str(out)],
        "demo": ["demo", "--size", "tiny", "--out", str(out)],
    }[command]
    held = {"synth": f"{out}.h5", "export": container_path(f"{out}.zarr/a")}.get(command, out)
    # Another process holds the output, as a concurrent run would.
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from neuroflood.outputs import container_path, exclusive\n"
            "with exclusive(sys.argv[1], 'x'):\n    print('held', flush=True); time.sleep(60)",
            str(held),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        code, _, err = run_cli(argv, capsys)
        assert code == 2 and "another neuroflood run is writing" in err, err
        assert len(err.strip().splitlines()) == 1
    finally:
        holder.kill()
        holder.wait()
    assert not out.exists() and not Path(f"{out}.h5").exists() and not Path(f"{out}.zarr").exists()


def test_the_lock_goes_when_its_holder_dies(tmp_path):
    """flock is dropped by the kernel: a killed run never blocks the next one."""
    out = tmp_path / "out"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from neuroflood.outputs import container_path, exclusive\n"
            "with exclusive(sys.argv[1], 'x'):\n    print('held', flush=True); time.sleep(60)",
            str(out),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout.readline().strip() == "held"
    holder.kill()
    holder.wait()
    with exclusive(out, "x"):
        pass


# -- interrupted exports ---------------------------------------------------------------------

INTERRUPTED_EXPORT = r"""
import os, signal, sys
from neuroflood import volume
from neuroflood.cli import sigterm_unwinds

src, dst, how = sys.argv[1:4]
real = volume.Volume.__setitem__
calls = []

def write_then_stop(self, key, value):
    real(self, key, value)
    calls.append(1)
    if len(calls) == 3:
        if how == "swallowed":  # a SIGTERM whose exception a weakref callback swallowed
            import neuroflood.cli as cli
            cli._terminated = signal.SIGTERM
        else:
            os.kill(os.getpid(), getattr(signal, how))

volume.Volume.__setitem__ = write_then_stop
try:
    with sigterm_unwinds():
        volume.copy_volume(src, dst, (8, 8, 8), progress=False)
except KeyboardInterrupt:
    sys.exit(130)
"""


@pytest.mark.parametrize(
    "dst, how",
    [
        ("new.h5:seg", "SIGINT"),
        ("existing.h5:seg", "SIGTERM"),
        ("new.zarr/seg", "SIGTERM"),
        ("existing.zarr/seg", "SIGINT"),
        ("precomputed://pc", "SIGINT"),
        ("new.n5/seg", "swallowed"),
        ("new.npy", "SIGTERM"),
    ],
)
def test_an_interrupted_export_leaves_nothing(dst, how, data, tmp_path):
    write_volume(f"{tmp_path}/existing.h5:other", np.ones((4, 4, 4), np.uint8))
    write_volume(f"{tmp_path}/existing.zarr/other", np.ones((4, 4, 4), np.uint8))
    before = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
    target = dst if dst.startswith("precomputed://") else f"{tmp_path}/{dst}"
    target = target.replace("precomputed://", f"precomputed://{tmp_path}/")
    proc = subprocess.run(
        [sys.executable, "-c", INTERRUPTED_EXPORT, f"{data}/v.h5:labels", target, how], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == (130 if how == "SIGINT" else 143), proc.stderr
    after = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
    assert after == before
    with h5py.File(tmp_path / "existing.h5", "r") as f:
        assert list(f) == ["other"]  # no half-written dataset inside either


# -- permissions -----------------------------------------------------------------------------


def test_outputs_are_readable_by_colleagues(data, tmp_path, capsys):
    """Under umask 022, files are 0644 and directories 0755 (mkstemp/mkdtemp would make them private)."""
    old = os.umask(0o022)
    try:
        assert run_cli(["synth", "--shape", "16,16,16", "--out", f"{tmp_path}/s.h5"], capsys)[0] == 0
        assert run_cli(["import-tf", str(CKPT), f"{tmp_path}/m"], capsys)[0] == 0
        assert run_cli(["prepare", "--labels", f"{data}/v.h5:labels", "--out", f"{tmp_path}/p", *PREP], capsys)[0] == 0
        assert run_cli(["export", f"{data}/v.h5:labels", f"{tmp_path}/e.h5:x"], capsys)[0] == 0
        write_volume(f"{tmp_path}/w.h5:x", np.ones((4, 4, 4), np.uint8))
    finally:
        os.umask(old)
    for p in [tmp_path / "s.h5", tmp_path / "e.h5", tmp_path / "w.h5", *(tmp_path / "m").iterdir(), *(tmp_path / "p").iterdir()]:
        mode = stat.S_IMODE(p.stat().st_mode)
        assert mode == (0o755 if p.is_dir() else 0o644), (p, oct(mode))
    for d in (tmp_path / "m", tmp_path / "p"):
        assert stat.S_IMODE(d.stat().st_mode) == 0o755, d


# -- a failed demo can be run again ----------------------------------------------------------


def test_a_failed_demo_leaves_nothing_in_the_way(tmp_path, capsys, monkeypatch):
    from neuroflood import demo

    def fail_in_train(stage, argv, log):
        if stage == "train":
            raise demo.ConfigError("demo stage 'train' failed (exit 2); see the messages above")
        return 0.0

    monkeypatch.setattr(demo, "_run", fail_in_train)
    out = tmp_path / "demo"
    code, _, err = run_cli(["demo", "--size", "tiny", "--out", str(out)], capsys)
    assert code == 2 and "train" in err
    assert not out.exists()
    (tmp_path / "empty").mkdir()
    code, _, _ = run_cli(["demo", "--size", "tiny", "--out", str(tmp_path / "empty")], capsys)
    assert code == 2 and list((tmp_path / "empty").iterdir()) == []
    json.dumps({})  # (json imported for the marker check below)


# -- evaluate, report and study write named files into a directory: never someone else's ------


def test_evaluate_and_report_never_replace_files_they_did_not_write(data, tmp_path, capsys):
    lab = f"{data}/v.h5:labels"
    out = tmp_path / "ev"
    out.mkdir()
    (out / "metrics.json").write_text("my own notes\n")
    code, _, err = run_cli(["evaluate", lab, lab, "--out", str(out)], capsys)
    assert code == 2 and "was not written by neuroflood evaluate" in err
    assert (out / "metrics.json").read_text() == "my own notes\n"
    assert sorted(p.name for p in out.iterdir()) == ["metrics.json"]
    # Its own earlier output is updated in place by a rerun.
    fresh = tmp_path / "ev2"
    assert run_cli(["evaluate", lab, lab, "--out", str(fresh)], capsys)[0] == 0
    assert run_cli(["evaluate", lab, lab, "--out", str(fresh)], capsys)[0] == 0
    # `report` does not replace evaluate's report.html in the same directory.
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text(json.dumps({"step": 1, "time_s": 1.0, "split": "train", "fovs_per_s": 2.0, "loss": 0.5}) + "\n")
    code, _, err = run_cli(["report", str(run), "--out", str(fresh)], capsys)
    assert code == 2 and "was not written by neuroflood report" in err


def test_a_study_never_replaces_a_users_file(tmp_path, capsys):
    out = tmp_path / "st"
    out.mkdir()
    (out / "lr_scaling.json").write_text("mine\n")
    code, _, err = run_cli(["study", "lr-scaling", "--out", str(out)], capsys)
    assert code == 2 and "was not written by neuroflood study" in err
    assert (out / "lr_scaling.json").read_text() == "mine\n"


def test_segment_never_replaces_a_users_file_named_as_summary(tmp_path, capsys):
    """--summary naming a file of the user's is refused before any work."""
    notes = tmp_path / "notes.json"
    notes.write_text('{"mine": true}\n')
    code, _, err = run_cli(
        ["segment", "--model", str(CKPT), "--image", "x.h5:image", "--out", f"{tmp_path}/s.h5:seg", "--summary", str(notes)], capsys
    )
    assert code == 2 and "is not a summary of neuroflood segment" in err, err
    assert notes.read_text() == '{"mine": true}\n'
