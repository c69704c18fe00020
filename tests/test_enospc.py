"""A full disk (ENOSPC) part-way through a write, and a damaged inference checkpoint.

The disk fills at the lowest write each path really makes: safetensors' ``save_file`` (the
model weights of a training checkpoint; its real ENOSPC error is a ``SafetensorError`` ending
in "(os error 28)"), the Python file a training checkpoint's ``state.pt``, an ``.npz`` output
or a coordinate file is written through, and zarr's chunk files. Part of the data lands, then
``OSError(ENOSPC)``. Each case asserts that the earlier good file at the same place is intact
byte for byte, that no temporary file is left, and (through the CLI) that the user sees one
line ``neuroflood: error: No space left on device ... the disk is full ...`` and exit code 2.
"""

from __future__ import annotations

import builtins
import errno
import os
import pathlib
import re
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

import neuroflood.model.checkpoint as model_checkpoint
import neuroflood.train.checkpoint as train_checkpoint
from neuroflood.cli import main
from neuroflood.config import ModelConfig
from neuroflood.errors import CheckpointError
from neuroflood.model import build_model, load_model, save_model
from neuroflood.prepare.coordfile import write_coordinates
from neuroflood.synthetic import make_em_volume
from neuroflood.volume import write_volume

TINY = ModelConfig(depth=1, features=4, fov_size=(5, 5, 5), deltas=(2, 2, 2))
TINY_SPEC = "depth=1,features=4,fov=5,5,5,deltas=2,2,2"
FULL = re.compile(r"^neuroflood: error: .*No space left on device\b.*; the disk is full", re.M)


class FullDisk:
    """A real open file that takes ``room`` more bytes, then fails as a full disk does: the
    part that fits is written, then ``OSError(ENOSPC)``."""

    def __init__(self, f, room: int):
        self._f, self.room = f, room

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        if len(view) > self.room:
            self._f.write(view[: self.room])
            self.room = 0
            raise OSError(errno.ENOSPC, "No space left on device")
        self.room -= len(view)
        return self._f.write(view)

    def __getattr__(self, name: str):
        return getattr(self._f, name)

    def __enter__(self) -> FullDisk:
        return self

    def __exit__(self, *exc) -> None:
        self._f.close()


def files(root: Path) -> dict[str, bytes]:
    """Every file below ``root`` with its bytes (hidden ones included)."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.strip()]


def fill_disk_in_mkstemp_files(monkeypatch, room: int, match: str) -> None:
    """Files made by ``tempfile.mkstemp`` whose name contains ``match`` and are opened with
    ``os.fdopen`` (atomic_savez, write_coordinates) fill the disk after ``room`` bytes."""
    real_mkstemp, real_fdopen, fds = tempfile.mkstemp, os.fdopen, set()

    def mkstemp(*args, **kwargs):
        fd, name = real_mkstemp(*args, **kwargs)
        if match in os.path.basename(name):
            fds.add(fd)
        return fd, name

    def fdopen(fd, *args, **kwargs):
        f = real_fdopen(fd, *args, **kwargs)
        return FullDisk(f, room) if fd in fds else f

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
    monkeypatch.setattr(os, "fdopen", fdopen)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A 24³ synthetic volume, its training coordinates and a tiny seeded network."""
    d = tmp_path_factory.mktemp("enospc")
    image, labels = make_em_volume((24, 24, 24), seed=1)
    write_volume(f"{d}/v.h5:image", image)
    write_volume(f"{d}/v.h5:labels", labels)
    write_coordinates(d / "train.nfc", np.random.default_rng(0).integers(6, 18, (16, 3)), None, ["v"])
    save_model(build_model(TINY, seed=0), d / "model")
    # Segmentation with a network that floods bright regions: two objects, so outputs have content.
    bright = np.zeros((24, 24, 24), np.uint8)
    bright[3:11, 3:20, 3:10] = 255
    bright[14:21, 12:21, 13:21] = 255
    write_volume(f"{d}/v.h5:bright", bright)
    save_model(bright_model(), d / "bright_model")
    return d


def bright_model() -> torch.nn.Module:
    """A 1-level convstack whose update is ``10 * relu(raw / 255) - 3``: it floods exactly the
    bright regions (as in tests/infer_helpers.py)."""
    cfg = ModelConfig(depth=1, features=1, fov_size=(5, 5, 5), deltas=(2, 2, 2), image_mean=0.0, image_stddev=255.0)
    model = build_model(cfg, seed=0)
    with torch.no_grad():
        for conv in model.layers.values():
            conv.weight.zero_()
            conv.bias.zero_()
        model.layers["conv0_a"].weight[0, 0, 1, 1, 1] = 1.0
        model.layers["conv0_b"].weight[0, 0, 1, 1, 1] = 1.0
        model.layers["conv_lom"].weight[0, 0, 0, 0, 0] = 10.0
        model.layers["conv_lom"].bias[0] = -3.0
    return model


# -- (a) training checkpoints ----------------------------------------------------------------------------


def _safetensors_full_after(monkeypatch, calls_ok: int, on_fail=lambda: None) -> None:
    """safetensors ``save_file`` as it behaves on a full disk, from call ``calls_ok + 1`` on:
    part of the file is written, then its real error ("... (os error 28)")."""
    from safetensors import SafetensorError

    real = model_checkpoint.save_file
    calls = []

    def save_file(tensors, filename, metadata=None):
        calls.append(filename)
        if len(calls) <= calls_ok:
            return real(tensors, filename, metadata=metadata)
        on_fail()
        real(tensors, filename, metadata=metadata)
        Path(filename).write_bytes(Path(filename).read_bytes()[:100])
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(model_checkpoint, "save_file", save_file)


def _state(step: int) -> dict:
    return {"step": step, "optimizer": {"lr": torch.tensor([0.1] * 1000)}, "generators": []}


@pytest.mark.parametrize("where", ["weights", "state"])
@pytest.mark.parametrize("same_step", [False, True], ids=["next-step", "same-step"])
def test_checkpoint_save_on_full_disk_keeps_the_previous_one(tmp_path, monkeypatch, where, same_step):
    model = build_model(TINY, seed=0)
    good = train_checkpoint.save_checkpoint(tmp_path, model, _state(1))
    before = files(good)
    if where == "weights":
        _safetensors_full_after(monkeypatch, 0)
    else:
        real_open = builtins.open

        def open_(path, mode="r", *args, **kwargs):
            f = real_open(path, mode, *args, **kwargs)
            return FullDisk(f, 200) if Path(path).name == "state.pt" and "w" in mode else f

        monkeypatch.setattr(train_checkpoint, "open", open_, raising=False)
    with torch.no_grad():
        next(model.parameters()).add_(1.0)
    with pytest.raises(OSError) as e:
        train_checkpoint.save_checkpoint(tmp_path, model, _state(1 if same_step else 2))
    assert e.value.errno == errno.ENOSPC and "No space left on device" in str(e.value)
    assert train_checkpoint.checkpoint_dirs(tmp_path) == [good]
    assert files(good) == before  # byte for byte
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [good.name]  # no temporary left
    monkeypatch.undo()
    assert train_checkpoint.load_checkpoint(good).step == 1


def test_train_cli_on_full_disk_says_so_in_one_line_and_resumes_exactly(data, tmp_path, monkeypatch, capsys):
    """The 2nd checkpoint hits a full disk: one error line, exit 2, the 1st checkpoint intact;
    once there is room, the same command resumes from it to the same weights as a clean run."""

    def argv(run: Path) -> list[str]:
        return [
            "train",
            "--image",
            f"{data}/v.h5:image",
            "--labels",
            f"{data}/v.h5:labels",
            "--coords",
            str(data / "train.nfc"),
            "--run-dir",
            str(run),
            "--model",
            TINY_SPEC,
            "--optimizer",
            "adam",
            "--batch-size",
            "2",
            "--max-steps",
            "4",
            "--checkpoint-every-steps",
            "2",
            "--no-tensorboard",
            "--no-progress",
            "--threads",
            "1",
        ]

    run = tmp_path / "run"
    snap = {}
    _safetensors_full_after(monkeypatch, 1, on_fail=lambda: snap.update(files(run / "checkpoints")))
    capsys.readouterr()
    assert main(argv(run)) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(error_lines(err)) == 1 and FULL.search(err), err
    assert re.search(r"\(.+model\.safetensors\)", err)  # names the file
    assert files(run / "checkpoints") == snap and [p.name for p in train_checkpoint.checkpoint_dirs(run)] == ["step-00000002"]
    monkeypatch.undo()
    assert main(argv(run)) == 0
    assert main(argv(tmp_path / "clean")) == 0
    a = load_model(run / "checkpoints" / "step-00000004" / "model").state_dict()
    b = load_model(tmp_path / "clean" / "checkpoints" / "step-00000004" / "model").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not [p for p in (run / "checkpoints").iterdir() if p.name.startswith(".")]


def test_stale_temporaries_of_a_killed_writer_are_swept(tmp_path):
    """A checkpoint writer killed outright leaves its temporary directory; the next save on
    this host removes it when its process is gone, and never a live writer's."""
    model = build_model(TINY, seed=0)
    train_checkpoint.save_checkpoint(tmp_path, model, _state(1))
    root = tmp_path / "checkpoints"
    host = train_checkpoint.socket.gethostname()
    dead = root / f".step-00000002.tmp-{2**22 + 12345}@{host}-abc"  # beyond pid_max: not running
    live = root / f".step-00000002.tmp-{os.getppid()}@{host}-abc"
    other_host = root / f".step-00000002.tmp-{2**22 + 12345}@elsewhere.example-abc"
    for p in (dead, live, other_host):
        (p / "model").mkdir(parents=True)
    train_checkpoint.save_checkpoint(tmp_path, model, _state(2))
    assert not dead.exists() and live.exists() and other_host.exists()


# -- (b) segmentation outputs ----------------------------------------------------------------------------


def _segment(data: Path, out: str, *extra: str) -> list[str]:
    return [
        "segment",
        "--model",
        str(data / "bright_model"),
        "--image",
        f"{data}/v.h5:bright",
        "--out",
        out,
        "--no-progress",
        "--threads",
        "1",
        "--set",
        "options.min_segment_size=20",
        "--set",
        "keep_probability_maps=true",
        *extra,
    ]


def test_segment_npz_output_on_full_disk(data, tmp_path, monkeypatch, capsys):
    out = tmp_path / "seg.npz"
    assert main(_segment(data, str(out))) == 0
    assert len(np.unique(np.load(out)["segmentation"])) == 3  # background and two objects
    before = files(tmp_path)
    fill_disk_in_mkstemp_files(monkeypatch, 300, ".seg.npz.")
    capsys.readouterr()
    code = main(_segment(data, str(out), "--overwrite", "--set", "options.move_threshold=0.6"))
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and len(error_lines(err)) == 1 and FULL.search(err), err
    assert f"({out})" in err  # names the file
    assert files(tmp_path) == before  # the earlier result, byte for byte; no temporary file


def _zarr_overwrite_on_full_disk(data: Path, tmp_path: Path, monkeypatch, capsys) -> tuple[int, str, dict, dict]:
    """Segment into seg.zarr/seg, then --overwrite it with another request while the disk
    fills during the segmentation array's chunks (its companions ``seg_prob`` and ``seg_info``
    come first). Returns (exit code, stderr, files before, files after)."""
    out = tmp_path / "seg.zarr"
    assert main(_segment(data, f"{out}/seg")) == 0
    assert {"seg", "seg_prob", "seg_info"} <= {p.name for p in out.iterdir()}
    before = files(tmp_path)
    real_open = pathlib.Path.open

    def open_(self, mode="r", *args, **kwargs):
        f = real_open(self, mode, *args, **kwargs)
        # zarr writes every chunk (and zarr.json) to a ``.partial`` file, then renames it
        chunk = self.name.endswith(".partial") and not self.name.startswith("zarr.")
        full = "w" in mode and chunk and re.search(r"/\.?seg(\.tmp-\d+)?/", str(self).replace(os.sep, "/"))
        return FullDisk(f, 10) if full else f

    monkeypatch.setattr(pathlib.Path, "open", open_)
    capsys.readouterr()
    code = main(_segment(data, f"{out}/seg", "--overwrite", "--set", "options.move_threshold=0.6"))
    err = capsys.readouterr().err
    monkeypatch.undo()
    return code, err, before, files(tmp_path)


def test_segment_zarr_output_on_full_disk(data, tmp_path, monkeypatch, capsys):
    code, err, before, after = _zarr_overwrite_on_full_disk(data, tmp_path, monkeypatch, capsys)
    assert after == before  # segmentation, probabilities and info as they were; no temporaries
    assert code == 2 and "Traceback" not in err and len(error_lines(err)) == 1 and "No space left on device" in err, err


def test_segment_zarr_output_on_full_disk_says_the_disk_is_full(data, tmp_path, monkeypatch, capsys):
    code, err, _, _ = _zarr_overwrite_on_full_disk(data, tmp_path, monkeypatch, capsys)
    assert FULL.search(err), err


# -- (c) coordinate files --------------------------------------------------------------------------------


def test_write_coordinates_on_full_disk(tmp_path, monkeypatch):
    path = tmp_path / "c.nfc"
    write_coordinates(path, np.arange(30).reshape(10, 3), None, ["v"])
    before = files(tmp_path)
    fill_disk_in_mkstemp_files(monkeypatch, 100, ".c.nfc.")
    with pytest.raises(OSError) as e:
        write_coordinates(path, np.arange(3000).reshape(1000, 3), None, ["v"])
    assert e.value.errno == errno.ENOSPC and e.value.filename == str(path)
    assert files(tmp_path) == before


def test_prepare_on_full_disk(data, tmp_path, monkeypatch, capsys):
    """``prepare --overwrite`` whose coordinate file hits a full disk: the earlier output stays."""
    out = tmp_path / "prep"
    argv = [
        "prepare",
        "--labels",
        f"v={data}/v.h5:labels",
        "--out",
        str(out),
        "--lom-radius",
        "3,3,3",
        "--margin",
        "4,4,4",
        "--min-size",
        "20",
        "--allow-missing-classes",
        "--no-progress",
    ]
    assert main(argv) == 0
    before = files(tmp_path)
    fill_disk_in_mkstemp_files(monkeypatch, 1000, "coordinates.nfc")
    capsys.readouterr()
    code = main([*argv, "--overwrite", "--seed", "1"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and len(error_lines(err)) == 1 and FULL.search(err), err
    assert files(tmp_path) == before and sorted(p.name for p in tmp_path.iterdir()) == ["prep"]


# -- a damaged inference checkpoint ----------------------------------------------------------------------


def _npz(**arrays) -> bytes:
    import io

    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    return buf.getvalue()


GARBAGE = {
    "random-bytes": lambda: np.random.default_rng(0).bytes(500),  # numpy would talk about allow_pickle
    "empty": lambda: b"",
    "truncated": lambda: _npz(segmentation=np.arange(10000))[:300],
    "pickled-objects": lambda: _npz(request=np.array([{"a": 1}], dtype=object)),
    "other-npz": lambda: _npz(a=np.zeros(3)),
}


@pytest.mark.parametrize("kind", sorted(GARBAGE))
def test_damaged_inference_checkpoint_is_named_with_the_fix(data, tmp_path, capsys, kind):
    from neuroflood.infer.storage import default_checkpoint_path

    out = f"{tmp_path}/seg.npz"
    ckpt = Path(default_checkpoint_path(out))
    ckpt.write_bytes(GARBAGE[kind]())
    capsys.readouterr()
    assert main(_segment(data, out)) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(error_lines(err)) == 1, err
    assert re.search(rf"^neuroflood: error: inference checkpoint {re.escape(str(ckpt))} is corrupt .*delete it", err), err
    assert "pickle" not in err
    assert ckpt.exists() and not Path(out).exists()  # the user's file is left for them to look at


def test_unreadable_inference_checkpoint_is_not_called_corrupt(tmp_path):
    from neuroflood.infer.storage import load_canvas_checkpoint

    (tmp_path / "dir.cpoint.npz").mkdir()
    with pytest.raises(CheckpointError, match=r"cannot be read \(Is a directory\)"):
        load_canvas_checkpoint(tmp_path / "dir.cpoint.npz", {})
