"""Segmentation outputs: written and read back in every format, request conflicts, bad specs."""

from __future__ import annotations

import numpy as np
import pytest

from infer_helpers import SMALL, bright_image, bright_model
from neuroflood.errors import VolumeError
from neuroflood.infer.segment import segment_subvolume
from neuroflood.infer.storage import check_output, read_output, write_segmentation


@pytest.fixture(scope="module")
def bright_result():
    return segment_subvolume(bright_model(), bright_image(), SMALL)


@pytest.mark.parametrize("spec", ["seg.h5:segmentation", "seg.zarr/segmentation", "seg.npz"])
def test_write_read_output_and_request_conflicts(tmp_path, spec, bright_result):
    res = bright_result
    out = str(tmp_path / spec)
    meta = {"request": {"a": 1}, "summary": res.summary()}
    write_segmentation(out, res.segmentation, origins=res.origins, overlaps=res.overlaps, qprob=res.qprob, meta=meta)
    back = read_output(out)
    assert back["segmentation"].dtype == np.uint8
    assert np.array_equal(back["segmentation"], res.segmentation)
    assert np.array_equal(back["qprob"], res.qprob)
    assert {k: (o.start_zyx, o.iterations) for k, o in back["origins"].items()} == {
        k: (o.start_zyx, o.iterations) for k, o in res.origins.items()
    }
    assert check_output(out, {"a": 1}) is True
    with pytest.raises(VolumeError, match=r"another request \(differs in: a\)"):
        check_output(out, {"a": 2})
    assert check_output(out, {"a": 2}, overwrite=True) is False


def test_output_spec_errors(tmp_path):
    with pytest.raises(VolumeError, match="names no dataset"):
        write_segmentation(str(tmp_path / "x.h5"), np.zeros((2, 2, 2)), origins={})
    with pytest.raises(VolumeError, match="not an HDF5, zarr or npz"):
        write_segmentation(str(tmp_path / "x.tif"), np.zeros((2, 2, 2)), origins={})
