"""Synthetic EM: deterministic, dense, EM-like contrast, and the `synth` command."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from neuroflood.errors import DataError
from neuroflood.synthetic import make_em_volume
from neuroflood.volume import open_volume


def test_deterministic_and_typed():
    a_img, a_lab = make_em_volume((32, 40, 36), seed=5)
    b_img, b_lab = make_em_volume((32, 40, 36), seed=5)
    c_img, _ = make_em_volume((32, 40, 36), seed=6)
    assert a_img.dtype == np.uint8 and a_lab.dtype == np.uint64
    assert a_img.shape == a_lab.shape == (32, 40, 36)
    assert np.array_equal(a_img, b_img) and np.array_equal(a_lab, b_lab)
    assert not np.array_equal(a_img, c_img)


def test_dense_touching_processes_with_dark_membranes(synth_small):
    image, labels = synth_small
    assert labels.min() >= 1  # dense: every voxel belongs to a process
    ids = np.unique(labels)
    assert len(ids) >= 10 and ids[-1] == len(ids)  # ids are 1..N
    boundary = np.zeros(labels.shape, bool)
    for ax in range(3):
        boundary |= np.diff(labels, axis=ax, append=np.take(labels, [-1], axis=ax)) != 0
    assert image[boundary].mean() < image[~boundary].mean() - 25  # membranes are dark
    # most objects are single connected components (territories of one skeleton)
    n_components = sum(ndimage.label(labels == i)[1] for i in ids)
    assert n_components <= 1.1 * len(ids)


def test_difficulty_knobs():
    easy, lab = make_em_volume((32, 32, 32), seed=0, noise=0.0, blur=0.0)
    hard, _ = make_em_volume((32, 32, 32), seed=0, noise=30.0, membrane_contrast=0.3)
    boundary = np.diff(lab, axis=2, append=lab[:, :, -1:]) != 0
    contrast = lambda im: im[~boundary].mean() - im[boundary].mean()  # noqa: E731
    assert contrast(easy) > contrast(hard)
    dense = make_em_volume((32, 32, 32), seed=0, density=6.0)[1]
    sparse = make_em_volume((32, 32, 32), seed=0, density=1.0)[1]
    assert dense.max() > sparse.max()


def test_bad_shape():
    with pytest.raises(DataError, match="3 sizes >= 8"):
        make_em_volume((4, 32, 32))


def test_synth_cli_writes_image_and_labels(tmp_path):
    from neuroflood.cli import main

    out = tmp_path / "s.h5"
    assert main(["synth", "--shape", "16,24,20", "--seed", "3", "--out", str(out)]) == 0
    img = open_volume(f"{out}:image")
    lab = open_volume(f"{out}:labels")
    assert img.shape == (16, 24, 20) and img.dtype == np.uint8 and lab.dtype == np.uint64
    np.testing.assert_array_equal(img[...], make_em_volume((16, 24, 20), seed=3)[0])
