"""Bad-input sweep of ``neuroflood train``, ``import-tf``, ``model-info`` and the config files.

Every row feeds one bad input through the CLI and checks the one-line error, the non-zero
exit and that nothing is left behind (tests/badinput.py). ``{d}`` is the row's own directory,
``{data}`` the shared tiny inputs (a 24³ volume, 10 coordinates, two small native models) and
``{fib25}`` the google/ffn TensorFlow checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from badinput import Case, check_refused, run_cli
from conftest import FIB25_CKPT
from neuroflood.config import ModelConfig
from neuroflood.model import build_model, save_model
from neuroflood.prepare.coordfile import write_coordinates
from neuroflood.synthetic import make_em_volume
from neuroflood.volume import write_volume

TINY = "depth=1,features=4,fov=5,deltas=1"  # patch 7³
TRAIN = [
    "train",
    "--image",
    "{data}/v.h5:image",
    "--labels",
    "{data}/v.h5:labels",
    "--coords",
    "{data}/c.nfc",
    "--run-dir",
    "{d}/run",
    "--model",
    TINY,
    "--max-steps",
    "1",
    "--no-progress",
    "--no-tensorboard",
    "--checkpoint-every-secs",
    "1000",
]
AS_ROOT = os.geteuid() == 0
NEEDS_PERMISSIONS = (pytest.mark.skipif(AS_ROOT, reason="root ignores permissions; the afile/ rows cover it"),)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("bad-train")
    image, labels = make_em_volume((24, 24, 24), seed=1)
    write_volume(f"{d}/v.h5:image", image)
    write_volume(f"{d}/v.h5:labels", labels)
    write_volume(f"{d}/v.h5:wnan", np.full(image.shape, np.nan, np.float32))
    write_volume(f"{d}/v.h5:wneg", np.full(image.shape, -1.0, np.float32))
    write_volume(f"{d}/v.h5:wsmall", np.ones((24, 24, 20), np.float32))
    write_coordinates(d / "c.nfc", np.random.default_rng(0).integers(6, 18, (10, 3)), None, ["v"])
    save_model(build_model(ModelConfig.parse_spec(TINY), seed=0), d / "m5")
    save_model(build_model(ModelConfig.parse_spec("depth=1,features=4,fov=33,deltas=1"), seed=0), d / "m33")
    return d


# --- setups: files a row needs inside its own directory ----------------------------------


def write(name: str, content: str | bytes):
    def setup(d: Path) -> None:
        path = d / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content if isinstance(content, bytes) else content.encode())

    return setup


def mkdir(*names: str):
    def setup(d: Path) -> None:
        for name in names:
            (d / name).mkdir(parents=True)

    return setup


def read_only(name: str):
    def setup(d: Path) -> None:
        (d / name).mkdir()
        (d / name).chmod(0o555)

    return setup


def bad_checkpoint(edit):
    """A copy of the tiny native model whose config.json ``edit(meta)`` spoils."""

    def setup(d: Path) -> None:
        shutil.copytree(Path(os.environ["BAD_TRAIN_DATA"]) / "m5", d / "ck")
        meta = json.loads((d / "ck" / "config.json").read_text())
        (d / "ck" / "config.json").write_text(edit(meta))

    return setup


def truncated_coordinates(d: Path) -> None:
    good = (Path(os.environ["BAD_TRAIN_DATA"]) / "c.nfc").read_bytes()
    (d / "c.nfc").write_bytes(good[:50])


def _set_depth_true(meta: dict) -> str:
    meta["model"]["depth"] = True
    return json.dumps(meta)


def run_dir_kept(d: Path) -> None:
    assert (d / "run").is_dir(), "a run directory that existed before was removed"


# --- the table ---------------------------------------------------------------------------

CASES = [
    # Findings of issue #16.
    Case(
        "batch-size-huge", TRAIN + ["--batch-size", "1000000000"], r"--batch-size 1000000000 .*needs at least [\d.,e+]+ GiB of host memory"
    ),
    Case(
        "toml-learning-rate-bool",
        TRAIN + ["--config", "{d}/c.toml"],
        r"learning_rate: expected a number, got the boolean true",
        setup=write("c.toml", "learning_rate = true\n"),
    ),
    Case(
        "toml-model-depth-bool",
        TRAIN + ["--config", "{d}/c.toml"],
        r"\[model\].*depth: expected an integer, got the boolean true",
        setup=write("c.toml", "[model]\ndepth = true\n"),
    ),
    Case("loss-weights-nan", TRAIN + ["--loss-weights", "{data}/v.h5:wnan"], r"loss weights .*NaN.*finite and >= 0"),
    Case("loss-weights-negative", TRAIN + ["--loss-weights", "{data}/v.h5:wneg"], r"loss weights .*negative.*finite and >= 0"),
    Case(
        "loss-weights-unknown-volume", TRAIN + ["--loss-weights", "w={data}/v.h5:wnan"], r"--loss-weights names volume\(s\) w, but .* has v"
    ),
    Case("loss-weights-wrong-shape", TRAIN + ["--loss-weights", "{data}/v.h5:wsmall"], r"loss weights .* shape \(24, 24, 20\)"),
    Case(
        "init-from-fov-mismatch",
        TRAIN + ["--init-from", "{data}/m33"],
        r"has depth 1, features 4, FOV 33x33x33, but the run's model .* FOV 5x5x5",
    ),
    Case(
        "init-from-tf-mismatch", TRAIN + ["--init-from", "{fib25}"], r"has depth 12, features 32, no recorded FOV .*run's model has depth 1"
    ),
    Case(
        "init-from-dir-not-checkpoint", TRAIN + ["--init-from", "{d}/empty"], r"empty is not a neuroflood checkpoint", setup=mkdir("empty")
    ),
    Case("init-from-empty", TRAIN + ["--init-from", " "], r"--init-from is empty"),
    Case("import-tf-mean-nan", ["import-tf", "{fib25}", "{d}/out", "--image-mean", "nan"], r"image_mean: input should be a finite number"),
    Case(
        "import-tf-stddev-zero", ["import-tf", "{fib25}", "{d}/out", "--image-stddev", "0"], r"image_stddev: input should be greater than 0"
    ),
    Case(
        "import-tf-stddev-inf",
        ["import-tf", "{fib25}", "{d}/out", "--image-stddev", "inf"],
        r"image_stddev: input should be a finite number",
    ),
    Case("import-tf-empty-out", ["import-tf", "{fib25}", ""], r"empty"),
    Case("import-tf-out-under-file", ["import-tf", "{fib25}", "{d}/afile/out"], r"cannot|not a directory", setup=write("afile", "x")),
    Case(
        "import-tf-out-read-only",
        ["import-tf", "{fib25}", "{d}/ro/out"],
        r"cannot|not writable|permission",
        setup=read_only("ro"),
        marks=NEEDS_PERMISSIONS,
    ),
    Case("import-tf-out-is-file", ["import-tf", "{fib25}", "{d}/afile"], r"exists", setup=write("afile", "x")),
    Case("import-tf-prefix-is-dir", ["import-tf", "{d}/p", "{d}/out"], r"no TensorFlow checkpoint at .*p", setup=mkdir("p")),
    Case("import-tf-index-is-dir", ["import-tf", "{d}/p", "{d}/out"], r"p.index is a directory", setup=mkdir("p.index")),
    Case("model-spec-depth-word", TRAIN + ["--model", "depth=two"], r"depth=two is not an integer"),
    Case("model-spec-features-count", TRAIN + ["--model", "features=4,4"], r"features has 2 entries but depth 12 has 24"),
    Case("model-spec-features-zero", TRAIN + ["--model", "depth=1,features=0,fov=5"], r"features: features 0 must be >= 1"),
    Case("model-spec-features-negative", TRAIN + ["--model", "depth=1,features=-4,fov=5"], r"features: features -4 must be >= 1"),
    Case(
        "toml-model-is-string",
        TRAIN + ["--config", "{d}/c.toml"],
        r"model in .*c.toml must be a \[model\] table",
        setup=write("c.toml", 'model = "depth=2"\n'),
    ),
    Case(
        "toml-model-features-list",
        TRAIN + ["--config", "{d}/c.toml"],
        r"features has 2 entries",
        setup=write("c.toml", "[model]\nfeatures = [4, 4]\n"),
    ),
    Case(
        "prepare-toml-margin-word",
        ["prepare", "--labels", "{data}/v.h5:labels", "--out", "{d}/prep", "--config", "{d}/p.toml"],
        r"margin: .*abc",
        setup=write("p.toml", 'margin = "abc"\n'),
    ),
    Case(
        "coords-is-dir",
        TRAIN[:5] + ["--coords", "{d}/prep"] + TRAIN[7:],
        r"--coords .*prep is a directory; give the coordinate file",
        setup=mkdir("prep"),
    ),
    Case("eval-coords-is-dir", TRAIN + ["--eval-coords", "{d}"], r"--eval-coords .* is a directory"),
    Case("config-is-dir", TRAIN + ["--config", "{d}"], r"config file .* is a directory"),
    Case(
        "run-dir-under-file",
        TRAIN[:7] + ["--run-dir", "{d}/afile/run"] + TRAIN[9:],
        r"cannot write to run directory .*afile is a file",
        setup=write("afile", "x"),
    ),
    Case(
        "run-dir-is-file",
        TRAIN[:7] + ["--run-dir", "{d}/afile"] + TRAIN[9:],
        r"cannot write to run directory .*a file is there",
        setup=write("afile", "x"),
    ),
    Case(
        "run-dir-read-only",
        TRAIN[:7] + ["--run-dir", "{d}/ro/run"] + TRAIN[9:],
        r"cannot write to run directory .*not writable",
        setup=read_only("ro"),
        marks=NEEDS_PERMISSIONS,
    ),
    Case(
        "failed-run-removes-new-parents",
        TRAIN[:7] + ["--run-dir", "{d}/new/deeper/run"] + TRAIN[9:] + ["--loss-weights", "{data}/v.h5:wnan"],
        r"loss weights .*NaN",
    ),
    Case(
        "failed-run-keeps-existing-run-dir",
        TRAIN + ["--loss-weights", "{data}/v.h5:wnan"],
        r"loss weights .*NaN",
        setup=mkdir("run"),
        after=run_dir_kept,
    ),
    # Numbers: zero, negative, huge, NaN and infinity.
    Case("batch-size-zero", TRAIN + ["--batch-size", "0"], r"batch_size: input should be greater than or equal to 1"),
    Case("batch-size-negative", TRAIN + ["--batch-size", "-3"], r"batch_size: .*greater than or equal to 1 \(got -3\)"),
    Case("batch-size-word", TRAIN + ["--batch-size", "four"], r"--batch-size: invalid int value"),
    Case("learning-rate-nan", TRAIN + ["--learning-rate", "nan"], r"learning_rate: input should be a finite number"),
    Case("learning-rate-inf", TRAIN + ["--learning-rate", "inf"], r"learning_rate: input should be a finite number"),
    Case("learning-rate-zero", TRAIN + ["--learning-rate", "0"], r"learning_rate: input should be greater than 0"),
    Case("momentum-inf", TRAIN + ["--optimizer", "momentum", "--momentum", "inf"], r"momentum: input should be a finite number"),
    Case("threshold-above-one", TRAIN + ["--threshold", "1.5"], r"threshold: input should be less than 1"),
    Case("seed-pad-nan", TRAIN + ["--seed-pad", "nan"], r"seed_pad: input should be a finite number"),
    Case("seed-negative", TRAIN + ["--seed", "-1"], r"seed: input should be greater than or equal to 0"),
    Case("seed-huge", TRAIN + ["--seed", str(2**70)], r"seed: input should be less than or equal to"),
    Case("max-train-seconds-inf", TRAIN + ["--max-train-seconds", "inf"], r"max_train_seconds: input should be a finite number"),
    Case("max-steps-negative", TRAIN + ["--max-steps", "-1"], r"max_steps: input should be greater than or equal to 0"),
    Case("threads-zero", TRAIN + ["--threads", "0"], r"threads: input should be greater than or equal to 1"),
    Case("threads-huge", TRAIN + ["--threads", "100000"], r"--threads 100000 is more than 4x the \d+ CPUs"),
    Case("emulate-workers-more-than-coordinates", TRAIN + ["--emulate-workers", "1000"], r"holds 10 coordinates for 1000 workers"),
    Case("fov-moves-zero", TRAIN + ["--fov-moves", "0"], r"fov_moves: input should be greater than or equal to 1"),
    Case("grad-clip-nan", TRAIN + ["--grad-clip", "nan"], r"grad_clip: input should be a finite number"),
    Case("epsilon-zero", TRAIN + ["--epsilon", "0"], r"epsilon: input should be greater than 0"),
    Case("adam-beta1-one", TRAIN + ["--adam-beta1", "1"], r"adam_beta1: input should be less than 1"),
    Case("keep-last-zero", TRAIN + ["--keep-last", "0"], r"keep_last: input should be greater than or equal to 1"),
    Case("summary-every-secs-nan", TRAIN + ["--summary-every-secs", "nan"], r"summary_every_secs: input should be a finite number"),
    Case("eval-examples-zero", TRAIN + ["--eval-examples", "0"], r"eval_examples: input should be greater than or equal to 1"),
    Case("decay-without-steps", TRAIN + ["--lr-decay-factor", "0.5"], r"lr_decay_factor and decay_steps go together"),
    Case("contrast-range-nan", TRAIN + ["--contrast-factor-range", "nan,1"], r"contrast_factor_range.0: input should be a finite number"),
    Case("image-offset-scale-nan", TRAIN + ["--image-offset-scale", "v:nan:1"], r"image_offset_scale.v.0: input should be a finite number"),
    Case(
        "image-offset-scale-zero-stddev", TRAIN + ["--image-offset-scale", "v:1:0"], r"image_offset_scale: stddev of volume 'v' must be > 0"
    ),
    Case("permutable-axes-out-of-range", TRAIN + ["--permutable-axes", "1,3"], r"permutable_axes: .*distinct axes"),
    Case("nproc-huge", TRAIN + ["--nproc-per-node", "100000"], r"--nproc-per-node 100000 is more than 4x the \d+ CPUs"),
    Case("nproc-zero", TRAIN + ["--nproc-per-node", "0"], r"--nproc-per-node must be >= 1"),
    Case("resume-without-checkpoint", TRAIN + ["--resume"], r"--resume given, but .* holds no checkpoint"),
    Case("device-unknown", TRAIN + ["--device", "gpu"], r"unknown device 'gpu'"),
    # Model specs.
    Case("model-spec-mean-nan", TRAIN + ["--model", TINY + ",mean=nan"], r"image_mean: input should be a finite number"),
    Case("model-spec-stddev-zero", TRAIN + ["--model", TINY + ",stddev=0"], r"image_stddev: input should be greater than 0"),
    Case("model-spec-even-fov", TRAIN + ["--model", "depth=1,features=4,fov=4"], r"fov_size: .*must be odd"),
    Case("model-spec-unknown-name", TRAIN + ["--model", TINY + ",name=unet"], r"name: unknown architecture 'unet'"),
    Case("model-spec-key-twice", TRAIN + ["--model", "depth=1,depth=2"], r"gives depth twice"),
    Case("model-spec-unknown-key", TRAIN + ["--model", TINY + ",detph=2"], r"detph: unknown option"),
    Case("model-spec-depth-zero", TRAIN + ["--model", "depth=0"], r"depth: input should be greater than or equal to 1"),
    Case("model-spec-empty", TRAIN + ["--model", ""], r"model spec '' is empty"),
    # Config files: missing, corrupt, wrong types, unknown keys.
    Case("config-missing", TRAIN + ["--config", "{d}/nope.toml"], r"config file .*nope.toml does not exist"),
    Case("config-bad-syntax", TRAIN + ["--config", "{d}/c.toml"], r"cannot parse .*c.toml", setup=write("c.toml", "batch_size = = 3\n")),
    Case("config-not-utf8", TRAIN + ["--config", "{d}/c.toml"], r"not UTF-8", setup=write("c.toml", b"seed = 1\n# \xff\xfe\n")),
    Case("config-json-array", TRAIN + ["--config", "{d}/c.json"], r"holds list, not a table of options", setup=write("c.json", "[1, 2]\n")),
    Case(
        "config-unknown-key",
        TRAIN + ["--config", "{d}/c.toml"],
        r"learning_rat: unknown option",
        setup=write("c.toml", "learning_rat = 0.1\n"),
    ),
    Case(
        "config-batch-size-word",
        TRAIN + ["--config", "{d}/c.toml"],
        r"batch_size: .*valid integer.*\(got \"four\"\)",
        setup=write("c.toml", 'batch_size = "four"\n'),
    ),
    Case(
        "config-batch-size-fraction",
        TRAIN + ["--config", "{d}/c.toml"],
        r"batch_size: .*fractional part",
        setup=write("c.toml", "batch_size = 2.5\n"),
    ),
    Case(
        "config-model-depth-word",
        TRAIN[:-8] + ["--config", "{d}/c.toml", "--max-steps", "1"],
        r"\[model\].*depth: .*valid integer",
        setup=write("c.toml", '[model]\ndepth = "x"\n'),
    ),
    Case(
        "config-images-not-table",
        TRAIN[:1] + TRAIN[5:] + ["--config", "{d}/c.toml"],
        r"images: input should be a valid dictionary",
        setup=write("c.toml", 'images = "v.h5:image"\n'),
    ),
    Case(
        "config-model-unknown-key",
        TRAIN[:-8] + ["--config", "{d}/c.toml", "--max-steps", "1"],
        r"\[model\].*fov: unknown option",
        setup=write("c.toml", "[model]\nfov = 5\n"),
    ),
    # Coordinate files: missing, empty, truncated, in a unicode path with spaces.
    Case("coords-missing", TRAIN[:5] + ["--coords", "{d}/nope.nfc"] + TRAIN[7:], r"nope.nfc does not exist"),
    Case("coords-empty", TRAIN[:5] + ["--coords", "{d}/c.nfc"] + TRAIN[7:], r"not a neuroflood coordinate file", setup=write("c.nfc", b"")),
    Case("coords-truncated", TRAIN[:5] + ["--coords", "{d}/c.nfc"] + TRAIN[7:], r"corrupt|truncated", setup=truncated_coordinates),
    Case(
        "coords-dir-unicode-spaces",
        TRAIN[:5] + ["--coords", "{d}/dàta dir"] + TRAIN[7:],
        r"--coords .*dàta dir is a directory",
        setup=mkdir("dàta dir"),
    ),
    Case("eval-coords-missing", TRAIN + ["--eval-coords", "{d}/nope.nfc"], r"nope.nfc does not exist"),
    # model-info on broken checkpoints.
    Case("model-info-not-checkpoint", ["model-info", "{d}"], r"is not a neuroflood checkpoint"),
    Case("model-info-missing", ["model-info", "{d}/nothing"], r"no checkpoint at"),
    Case("model-info-config-not-json", ["model-info", "{d}/ck"], r"cannot be read as JSON", setup=bad_checkpoint(lambda meta: "{not json")),
    Case(
        "model-info-config-depth-bool",
        ["model-info", "{d}/ck"],
        r"depth: expected an integer, got the boolean true",
        setup=bad_checkpoint(_set_depth_true),
    ),
    Case("model-info-config-is-list", ["model-info", "{d}/ck"], r"not a neuroflood model config", setup=bad_checkpoint(lambda meta: "[]")),
    Case(
        "model-info-config-json-is-dir",
        ["model-info", "{d}/ck"],
        r"config.json is not a file",
        setup=mkdir("ck/config.json", "ck/model.safetensors"),
    ),
]


def _resolve(case: Case, data: Path) -> Case:
    def sub(a: str) -> str:
        return a.replace("{data}", str(data)).replace("{fib25}", str(FIB25_CKPT))

    return dataclasses.replace(case, argv=[sub(a) for a in case.argv])


@pytest.mark.parametrize("case", [c.param() for c in CASES])
def test_bad_input(case: Case, data: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.setenv("BAD_TRAIN_DATA", str(data))
    check_refused(_resolve(case, data), tmp_path, capsys)


def test_the_sweep_is_wide():
    assert len(CASES) >= 35
    assert len({c.id for c in CASES}) == len(CASES)


@contextmanager
def held_elsewhere(output: Path) -> Iterator[None]:
    """Hold ``exclusive(output)`` in another process, as a concurrent run would.

    (Within one process ``exclusive`` is re-entrant, so the holder must be another process.)
    """
    code = "import sys\nfrom neuroflood.outputs import exclusive\nwith exclusive(sys.argv[1], 'the first run'):\n    print('held', flush=True)\n    sys.stdin.read()\n"
    proc = subprocess.Popen([sys.executable, "-c", code, str(output)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
        yield
    finally:
        proc.communicate("", timeout=30)


def test_a_second_run_into_a_held_run_dir_is_refused_and_the_first_run_is_untouched(data, tmp_path, capsys):
    argv = [a.replace("{data}", str(data)).replace("{d}", str(tmp_path)) for a in TRAIN]
    code, _, err = run_cli(argv, capsys)
    assert code == 0, err
    held = Case("run-dir-held", TRAIN + ["--max-steps", "3"], r"another neuroflood run is writing --run-dir .*run")
    with held_elsewhere(tmp_path / "run"):
        check_refused(_resolve(held, data), tmp_path, capsys)  # snapshot: the first run's files are untouched
        # The --nproc-per-node launcher is refused before it starts any worker.
        check_refused(_resolve(dataclasses.replace(held, argv=held.argv + ["--nproc-per-node", "1"]), data), tmp_path, capsys)
    assert not list(tmp_path.glob(".*lock"))  # the holder removed its lock file


def test_inputs_in_unicode_paths_with_spaces_work(data, tmp_path, capsys):
    where = tmp_path / "dàta dir ü"
    where.mkdir()
    shutil.copy(data / "v.h5", where / "v.h5")
    shutil.copy(data / "c.nfc", where / "c ü.nfc")
    argv = [
        a.replace("{data}/c.nfc", str(where / "c ü.nfc")).replace("{data}", str(where)).replace("{d}/run", str(where / "rün"))
        for a in TRAIN
    ]
    code, out, err = run_cli(argv, capsys)
    assert code == 0, err
    assert (where / "rün" / "checkpoints" / "step-00000001" / "model" / "model.safetensors").is_file()
    assert not [p.name for p in where.iterdir() if "lock" in p.name]


def test_train_never_writes_into_a_users_folder(data, tmp_path, capsys):
    """A --run-dir holding the user's own files (a config.json of theirs) is refused untouched."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text('{"my": "settings"}\n')
    case = Case("run-dir-users-folder", [a for a in TRAIN], r"holds files that neuroflood train did not write \(config.json\)")
    check_refused(_resolve(case, data), tmp_path, capsys)
    assert (run / "config.json").read_text() == '{"my": "settings"}\n'
