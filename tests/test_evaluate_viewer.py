"""`neuroflood view`: neuroglancer layers from every volume backend, in memory and lazily."""

from __future__ import annotations

import io
import urllib.request
import zlib

import numpy as np
import pytest

pytest.importorskip("neuroglancer")

from neuroflood.errors import DataError
from neuroflood.evaluate.viewer import make_viewer
from neuroflood.volume import write_volume

BACKENDS = {
    "h5": "{d}/v.h5:{name}",
    "zarr": "{d}/v.zarr/{name}",
    "n5": "{d}/v.n5/{name}",
    "precomputed": "precomputed://{d}/{name}",
    "npy": "{d}/{name}.npy",
}


def _chunk(url: str, source: str, start, end) -> np.ndarray:
    """Fetch a region of a layer over HTTP as the browser does (npz encoding, no downsampling)."""
    server = url.split("/v/")[0]
    token = source.removeprefix("python://volume/")
    path = f"{server}/neuroglancer/npz/{token}/1,1,1/{','.join(map(str, start))}/{','.join(map(str, end))}"
    with urllib.request.urlopen(path, timeout=30) as response:
        return np.load(io.BytesIO(zlib.decompress(response.read())))


@pytest.mark.parametrize("backend", sorted(BACKENDS))
@pytest.mark.parametrize("max_memory_mb", [2048, 0])  # in memory, and read lazily
def test_viewer_serves_every_backend(tmp_path, synth_small, backend, max_memory_mb):
    image, labels = synth_small
    img_spec = BACKENDS[backend].format(d=tmp_path, name="image")
    seg_spec = BACKENDS[backend].format(d=tmp_path, name="labels")
    write_volume(img_spec, image)
    write_volume(seg_spec, labels.astype(np.uint32))
    viewer, url = make_viewer(img_spec, [seg_spec], max_memory_mb=max_memory_mb, voxel_size=(8, 4, 4))
    assert url.startswith("http://127.0.0.1:")
    names = [layer.name for layer in viewer.state.layers]
    assert len(names) == 2 and viewer.state.layers[names[1]].type == "segmentation"
    seg_source = viewer.state.layers[names[1]].source[0].url
    img_source = viewer.state.layers[names[0]].source[0].url
    np.testing.assert_array_equal(_chunk(url, seg_source, (3, 5, 7), (19, 21, 40)), labels[3:19, 5:21, 7:40])
    np.testing.assert_array_equal(_chunk(url, img_source, (0, 0, 0), (48, 48, 48)), image)
    assert list(viewer.state.dimensions.names) == ["x", "y", "z"]
    assert list(viewer.state.dimensions.scales) == [4e-9, 4e-9, 8e-9]


def test_voxel_size_is_read_from_the_volume(tmp_path, fib25_h5):
    viewer, _ = make_viewer(f"{fib25_h5}:image", [f"{fib25_h5}:labels"], max_memory_mb=0)
    assert list(viewer.state.dimensions.scales) == [1e-8, 1e-8, 1e-8]
    names = [layer.name for layer in viewer.state.layers]
    assert names == ["training_sample2.h5:image", "training_sample2.h5:labels"]


def test_viewer_rejects_non_label_segmentations(tmp_path):
    np.save(tmp_path / "img.npy", np.zeros((4, 4, 4), np.uint8))
    np.save(tmp_path / "seg.npy", np.zeros((4, 4, 4), np.float32))
    np.save(tmp_path / "flat.npy", np.zeros((4, 4), np.uint8))
    with pytest.raises(DataError, match="not integer labels"):
        make_viewer(str(tmp_path / "img.npy"), [str(tmp_path / "seg.npy")])
    with pytest.raises(DataError, match="3-D"):
        make_viewer(str(tmp_path / "flat.npy"))
