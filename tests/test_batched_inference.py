"""Batched inference: several Canvases of one worker share network calls, and nothing changes.

On CPU every FOV of a batch gets the logits it gets alone, bit for bit (oneDNN for every
batch in inference; PyTorch's own choice sends small batches on one thread to a reference
kernel that rounds differently), so blockwise segmentation with ``batch_size`` K, K blocks
in flight per worker, equals the one-at-a-time result exactly. Batch size 1 is today's path:
no shared executor, no threads.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from infer_helpers import bright_model
from neuroflood.bbox import BoundingBox
from neuroflood.config import ModelConfig
from neuroflood.distributed import DistInfo
from neuroflood.infer import blockwise
from neuroflood.infer.block_segmenter import FFNBlockSegmenter
from neuroflood.infer.block_threads import run_phase_threads
from neuroflood.infer.config import InferenceRequest
from neuroflood.infer.executor import BatchedExecutor, LocalExecutor
from neuroflood.model import build_model
from neuroflood.synthetic import make_em_volume
from neuroflood.volume import open_volume, write_volume

REQUEST = {"options": {"min_segment_size": 50}, "checkpoint_interval": 0}
BLOCK, OVERLAP = (28, 28, 28), (12, 12, 12)  # 2 x 2 x 2 blocks of the 40 x 48 x 48 volume


def dense_bright_model(seed: int = 0) -> torch.nn.Module:
    """The hand-wired bright-region network with small random weights on every tap: it still
    floods the bright cells, and every output sums many products (rounding order matters)."""
    model = bright_model(9, 2)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for conv in model.layers.values():
            conv.weight.add_(0.02 * torch.randn(conv.weight.shape, generator=g))
    return model


@pytest.fixture
def one_thread():
    """torch on one thread: where PyTorch's heuristic would not pick oneDNN for small batches."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def threaded_phases(monkeypatch):
    """Blocks in flight per worker = the segmenter's ``concurrency``.

    blockwise.py runs its phases with ``run_phase``; until it calls ``run_phase_threads``
    with ``getattr(segmenter, "concurrency", 1)`` itself, the test routes it there.
    """
    if "run_phase_threads" in vars(blockwise):
        return
    seen: dict[str, int] = {}

    def run_phase(phase, info, key, tick=lambda: None):
        return run_phase_threads(phase, info, key, tick, seen["threads"])

    monkeypatch.setattr(blockwise, "run_phase", run_phase)
    return seen


@pytest.mark.parametrize("spec", ["depth=2,features=8,fov=9,9,9,deltas=2,2,2", "depth=3,features=16,fov=11,11,11,deltas=3,3,3"])
def test_a_batch_gives_every_fov_its_logits_alone_bit_for_bit(spec, one_thread):
    model = build_model(ModelConfig.parse_spec(spec), seed=3)
    fov = model.config.fov_size
    rng = np.random.default_rng(0)
    images = [rng.normal(size=fov).astype(np.float32) for _ in range(10)]
    seeds = [rng.normal(size=fov).astype(np.float32) for _ in range(10)]
    local = LocalExecutor(model, "cpu")
    alone = [local.predict(i, s) for i, s in zip(images, seeds)]
    out: dict[int, np.ndarray] = {}
    with BatchedExecutor(model, batch_size=5, device="cpu") as ex:
        clients = [ex.client() for _ in range(5)]

        def work(k: int) -> None:
            with clients[k] as client:
                for j in range(k, 10, 5):
                    out[j] = client.predict(images[j], seeds[j])

        threads = [threading.Thread(target=work, args=(k,)) for k in range(5)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        stats = ex.stats()
    assert stats["batches"] == 2  # two full batches of 5
    for j in range(10):
        assert np.array_equal(out[j], alone[j]), f"FOV {j}: max diff {np.abs(out[j] - alone[j]).max()}"


def test_a_lazy_client_holds_no_batch_back_until_it_asks():
    model = bright_model()
    img = np.ones((9, 9, 9), np.float32)
    with BatchedExecutor(model, batch_size=2, device="cpu") as ex:
        idle = ex.client(lazy=True)  # a Canvas still placing its seeds
        with ex.client() as busy:
            busy.predict(img, img)  # answered alone: the lazy client is not waited for
        idle.close()
        assert ex.stats()["batches"] == 1


def _blockwise(tmp_path, image_spec: str, batch: int, threaded: dict | None) -> tuple[np.ndarray, dict, dict]:
    if threaded is not None:
        threaded["threads"] = batch
    image = open_volume(image_spec)
    box = BoundingBox.from_shape(image.shape)
    request = InferenceRequest.model_validate({**REQUEST, "batch_size": batch})
    segmenter = FFNBlockSegmenter(dense_bright_model(), request, job_box=box)
    out = f"{tmp_path}/batch{batch}.zarr/seg"
    result = blockwise.run_blockwise_job(out, image, box, BLOCK, OVERLAP, segmenter, {"model": "dense-bright"}, DistInfo(), progress=False)
    return open_volume(out)[...], vars(result), segmenter.stats()


def test_batched_blockwise_equals_one_block_at_a_time(tmp_path, one_thread, threaded_phases):
    image, _ = make_em_volume((40, 48, 48), seed=1)
    spec = f"{tmp_path}/img.h5:image"
    write_volume(spec, image)
    before = set(threading.enumerate())
    seg1, res1, stats1 = _blockwise(tmp_path, spec, 1, threaded_phases)
    seg4, res4, stats4 = _blockwise(tmp_path, spec, 4, threaded_phases)
    assert res1["segments"] > 10  # a real segmentation, not an empty one
    assert np.array_equal(seg1, seg4)
    assert res1["segments"] == res4["segments"] and res1["fov_evaluations"] == res4["fov_evaluations"]
    assert stats1["fovs"] == 0  # batch size 1: each block's Canvas has its own executor, as before
    # batch size 4: every FOV went through the shared executor, several in most calls
    assert stats4["fovs"] == res4["fov_evaluations"] and stats4["batches"] < stats4["fovs"]
    # neither the block threads nor the shared executor outlive the job (zarr keeps its own I/O threads)
    assert not [t for t in threading.enumerate() if t not in before and t.is_alive() and t.name.startswith("neuroflood")]


def test_segment_batch_option_gives_the_same_blockwise_output(tmp_path, threaded_phases, capsys):
    from badinput import Case, check_refused
    from neuroflood.cli import main
    from neuroflood.model import save_model

    save_model(dense_bright_model(), tmp_path / "model")
    image, _ = make_em_volume((32, 40, 40), seed=2)
    write_volume(f"{tmp_path}/img.h5:image", image)
    argv = ["segment", "--model", str(tmp_path / "model"), "--image", f"{tmp_path}/img.h5:image", "--no-progress"]
    argv += ["--set", "checkpoint_interval=0", "--set", "options.min_segment_size=50", "--block-size", "24,24,24"]
    for batch in (1, 3):
        if threaded_phases is not None:
            threaded_phases["threads"] = batch
        assert main([*argv, "--out", f"{tmp_path}/b{batch}.zarr/seg", "--batch", str(batch)]) == 0
    one, three = open_volume(f"{tmp_path}/b1.zarr/seg")[...], open_volume(f"{tmp_path}/b3.zarr/seg")[...]
    assert one.any() and np.array_equal(one, three)
    (tmp_path / "bad").mkdir()
    check_refused(
        Case("batch-zero", [*argv, "--out", "{d}/o.zarr/seg", "--batch", "0"], r"--batch 0 must be >= 1"), tmp_path / "bad", capsys
    )


def test_batch_one_runs_the_phase_as_before(monkeypatch):
    from neuroflood.infer import block_threads

    calls = []
    monkeypatch.setattr(block_threads, "run_phase", lambda *a: calls.append(a) or "sequential")
    assert run_phase_threads("phase", DistInfo(), "key", threads=1) == "sequential" and len(calls) == 1
    segmenter = FFNBlockSegmenter(bright_model(), InferenceRequest.model_validate(REQUEST))
    assert segmenter.concurrency == 1 and segmenter.stats()["fovs"] == 0


def test_a_failing_block_is_recorded_and_the_others_run(tmp_path):
    from neuroflood.infer.blocks import BlockGrid
    from neuroflood.infer.scheduler import Phase

    grid = BlockGrid(BoundingBox.from_shape((40, 40, 40)), (20, 20, 20), (0, 0, 0))
    ran = []
    lock = threading.Lock()

    def run(block):
        if block.index == 3:
            raise ValueError("bad block")
        with lock:
            ran.append(block.index)
        return {"fov_evaluations": 2}

    phase = Phase(
        list(grid), run, lambda b: tmp_path / f"{b.index}.done", lambda b: tmp_path / f"{b.index}.failed", lambda b: f"block {b.index}"
    )
    result = run_phase_threads(phase, DistInfo(), "k", threads=3)
    assert sorted(ran) == [0, 1, 2, 4, 5, 6, 7] and sorted(result.run) == sorted(ran)
    assert result.fov_evaluations == 14 and len(result.failed) == 1 and (tmp_path / "3.failed").exists()
