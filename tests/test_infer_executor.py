"""Executors: batching across threads, errors handed to the caller, devices and precision."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from infer_helpers import bright_model
from neuroflood.errors import ConfigError
from neuroflood.infer.executor import BatchedExecutor, LocalExecutor
from neuroflood.precision import cpu_bf16_support


def test_batched_executor_matches_local_and_batches_across_threads():
    model = bright_model()
    rng = np.random.default_rng(0)
    images = [rng.random((9, 9, 9), np.float32) for _ in range(12)]
    seeds = [rng.normal(size=(9, 9, 9)).astype(np.float32) for _ in range(12)]
    local = LocalExecutor(model, "cpu")
    expected = [local.predict(i, s) for i, s in zip(images, seeds)]
    out: dict[int, np.ndarray] = {}
    with BatchedExecutor(model, batch_size=4, device="cpu") as ex:
        clients = [ex.client() for _ in range(4)]

        def work(k):
            with clients[k] as client:
                for j in range(k, 12, 4):
                    out[j] = client.predict(images[j], seeds[j])

        threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        stats = ex.stats()
    for j in range(12):
        np.testing.assert_allclose(out[j], expected[j], atol=1e-6)
    assert stats["fovs"] == 12 and stats["batches"] == 3  # every batch full


def test_batched_executor_passes_errors_to_the_caller():
    model = bright_model()
    with BatchedExecutor(model, batch_size=2, device="cpu") as ex:
        with ex.client() as client:
            with pytest.raises(RuntimeError):
                client.predict(np.zeros((9, 9), np.float32), np.zeros((9, 9), np.float32))


def test_device_and_precision_errors():
    model = bright_model()
    with pytest.raises(ConfigError, match="fp16 needs a CUDA"):
        LocalExecutor(model, "cpu", precision="fp16")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA is not available"):
            LocalExecutor(model, "cuda")
    if not cpu_bf16_support()[0]:
        return  # bf16 on a CPU without it is refused (tests/test_precision_inference.py)
    # bf16 autocast runs on CPU and stays close to fp32.
    img = np.random.default_rng(1).random((9, 9, 9), np.float32)
    seed = np.zeros((9, 9, 9), np.float32)
    a = LocalExecutor(model, "cpu").predict(img, seed)
    b = LocalExecutor(model, "cpu", precision="bf16").predict(img, seed)
    assert np.abs(a - b).max() < 0.1
