"""Shared fixtures. Real data lives in ../shared (never copied into the repo)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
FIB25_CKPT = SHARED / "models" / "fib25" / "model.ckpt-27465036"
FIB25_H5 = SHARED / "data" / "fib25" / "training_sample2.h5"
FIB25_GOLDEN = SHARED / "golden" / "fib25_forward_golden.npz"


def _require(path: Path) -> Path:
    if not (path.exists() or Path(f"{path}.index").exists()):
        pytest.fail(f"{path} is missing: tests need ../shared beside the repository (CI provides it)")
    return path


@pytest.fixture(scope="session")
def fib25_ckpt() -> Path:
    return _require(FIB25_CKPT)


@pytest.fixture(scope="session")
def fib25_h5() -> Path:
    return _require(FIB25_H5)


@pytest.fixture(scope="session")
def fib25_golden() -> dict:
    return dict(np.load(_require(FIB25_GOLDEN)))


@pytest.fixture(scope="session")
def fib25_model(fib25_ckpt):
    import neuroflood

    return neuroflood.load_model(fib25_ckpt)


@pytest.fixture(scope="session")
def synth_small():
    """A 48^3 synthetic EM volume: (image uint8, labels uint64)."""
    from neuroflood.synthetic import make_em_volume

    return make_em_volume((48, 48, 48), seed=1)
