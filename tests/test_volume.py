"""Volumes: every backend written then read back, lazily, in z,y,x; every error case."""

from __future__ import annotations

import numpy as np
import pytest

from neuroflood.bbox import BoundingBox
from neuroflood.errors import DataError, VolumeError
from neuroflood.volume import create_volume, open_volume, write_volume


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    return rng.integers(0, 255, size=(6, 7, 9), dtype=np.uint8)


@pytest.mark.parametrize(
    "spec",
    ["v.h5:raw", "v.h5:group/raw", "v.zarr/raw", "v.zarr", "v.n5/raw", "precomputed://v_pc", "v.npy"],
)
def test_create_write_read_back(tmp_path, data, spec):
    full = spec.replace("precomputed://", f"precomputed://{tmp_path}/") if spec.startswith("precomputed") else f"{tmp_path}/{spec}"
    vol = create_volume(full, data.shape, data.dtype, chunks=(4, 4, 4))
    vol[...] = data
    vol.close()
    back = open_volume(full)
    assert back.shape == data.shape and back.dtype == data.dtype
    np.testing.assert_array_equal(back[...], data)
    np.testing.assert_array_equal(back[1:4, 2:5, 0:9], data[1:4, 2:5, 0:9])
    np.testing.assert_array_equal(back[2], data[2])
    np.testing.assert_array_equal(back.read(BoundingBox((1, 1, 1), (2, 3, 4))), data[1:3, 1:4, 1:5])


def test_uint64_labels_round_trip_in_zarr_and_precomputed(tmp_path):
    labels = (np.arange(4 * 5 * 6, dtype=np.uint64).reshape(4, 5, 6) * (2**40)).astype(np.uint64)
    for spec in (f"{tmp_path}/l.zarr/seg", f"precomputed://{tmp_path}/seg_pc", f"{tmp_path}/l.h5:seg"):
        write_volume(spec, labels)
        back = open_volume(spec)
        assert back.dtype == np.uint64
        np.testing.assert_array_equal(back[...], labels)


def test_zarr_v3_arrays_are_read(tmp_path, data):
    import zarr

    arr = zarr.create_array(
        store=str(tmp_path / "v3.zarr"), name="img", shape=data.shape, dtype=data.dtype, chunks=(3, 3, 3), zarr_format=3
    )
    arr[...] = data
    np.testing.assert_array_equal(open_volume(f"{tmp_path}/v3.zarr/img")[...], data)


def test_png_and_tif_slice_stacks(tmp_path, data):
    import tifffile
    from PIL import Image

    (tmp_path / "png").mkdir()
    (tmp_path / "tif").mkdir()
    for z in range(data.shape[0]):
        Image.fromarray(data[z]).save(tmp_path / "png" / f"s{z:03d}.png")
        tifffile.imwrite(tmp_path / "tif" / f"s{z:03d}.tif", data[z])
    for spec in (f"{tmp_path}/png/*.png", f"{tmp_path}/tif/*.tif"):
        vol = open_volume(spec)
        assert vol.shape == data.shape
        np.testing.assert_array_equal(vol[...], data)
        np.testing.assert_array_equal(vol[2:4, 1:3, :], data[2:4, 1:3, :])


def test_multipage_tiff(tmp_path, data):
    import tifffile

    tifffile.imwrite(tmp_path / "stack.tif", data)
    vol = open_volume(tmp_path / "stack.tif")
    assert vol.shape == data.shape
    np.testing.assert_array_equal(vol[1:3, :, 4:6], data[1:3, :, 4:6])


def test_npz(tmp_path, data):
    np.savez(tmp_path / "one.npz", image=data)
    np.savez(tmp_path / "two.npz", image=data, labels=data.astype(np.uint64))
    np.testing.assert_array_equal(open_volume(f"{tmp_path}/one.npz")[...], data)
    np.testing.assert_array_equal(open_volume(f"{tmp_path}/two.npz:labels")[...], data)
    with pytest.raises(VolumeError, match="holds 2 arrays"):
        open_volume(f"{tmp_path}/two.npz")
    with pytest.raises(VolumeError, match="no array 'nope'"):
        open_volume(f"{tmp_path}/two.npz:nope")


def test_hdf5_attributes_and_lazy_reads(tmp_path, data):
    write_volume(f"{tmp_path}/a.h5:img", data, attrs={"resolution": [10, 10, 10]})
    vol = open_volume(f"{tmp_path}/a.h5:img")
    assert list(vol.attrs["resolution"]) == [10, 10, 10]
    assert np.asarray(vol).shape == data.shape


def test_missing_file_names_the_spec(tmp_path):
    with pytest.raises(VolumeError, match=r"nope\.h5 does not exist.*check the path"):
        open_volume(f"{tmp_path}/nope.h5:image")
    with pytest.raises(VolumeError, match="does not exist"):
        open_volume(f"{tmp_path}/nope.zarr/a")
    with pytest.raises(VolumeError, match="no files match"):
        open_volume(f"{tmp_path}/empty/*.png")


def test_missing_dataset_lists_what_exists(tmp_path, data):
    write_volume(f"{tmp_path}/a.h5:image", data)
    with pytest.raises(VolumeError, match=r"no dataset 'labels' in .*a\.h5 \(has: image\)"):
        open_volume(f"{tmp_path}/a.h5:labels")
    with pytest.raises(VolumeError, match="names no dataset"):
        open_volume(f"{tmp_path}/a.h5")
    write_volume(f"{tmp_path}/z.zarr/image", data)
    with pytest.raises(VolumeError, match="no zarr array 'labels'"):
        open_volume(f"{tmp_path}/z.zarr/labels")
    with pytest.raises(VolumeError, match="zarr group, not an array"):
        open_volume(f"{tmp_path}/z.zarr")


def test_unsupported_format():
    with pytest.raises(VolumeError, match="unsupported volume spec 'volume.mrc'.*file.h5:dataset"):
        open_volume("volume.mrc")


def test_corrupt_file_is_a_volume_error(tmp_path):
    (tmp_path / "bad.h5").write_bytes(b"not hdf5 at all")
    with pytest.raises(VolumeError, match="cannot open"):
        open_volume(f"{tmp_path}/bad.h5:image")


def test_reads_outside_the_volume_are_errors(tmp_path, data):
    write_volume(f"{tmp_path}/a.h5:image", data)
    vol = open_volume(f"{tmp_path}/a.h5:image")
    with pytest.raises(VolumeError, match=r"slice 4:8 on axis 0 is outside .*a\.h5:image"):
        vol[4:8]
    with pytest.raises(VolumeError, match="outside"):
        vol[:, -1:3]
    with pytest.raises(VolumeError, match="index 6 on axis 0"):
        vol[6]
    with pytest.raises(VolumeError, match="strided"):
        vol[::2]


def test_read_only_and_existing_targets(tmp_path, data):
    write_volume(f"{tmp_path}/a.h5:image", data)
    vol = open_volume(f"{tmp_path}/a.h5:image")
    with pytest.raises(VolumeError, match="read-only"):
        vol[0] = 1
    vol.close()
    with pytest.raises(VolumeError, match="already exists"):
        write_volume(f"{tmp_path}/a.h5:image", data)
    with pytest.raises(VolumeError, match="already exists"):
        create_volume(f"{tmp_path}/a.h5:image", data.shape, data.dtype)
    write_volume(f"{tmp_path}/a.h5:image", data * 0, overwrite=True)
    assert open_volume(f"{tmp_path}/a.h5:image")[...].max() == 0


def test_writable_open_and_shape_mismatch(tmp_path, data):
    write_volume(f"{tmp_path}/z.zarr/img", data)
    vol = open_volume(f"{tmp_path}/z.zarr/img", mode="r+")
    vol[0:2, 0:2, 0:2] = 7
    assert (open_volume(f"{tmp_path}/z.zarr/img")[0:2, 0:2, 0:2] == 7).all()
    with pytest.raises(VolumeError, match="cannot write an array of shape"):
        vol[0:2, 0:2, 0:2] = np.zeros((3, 3, 3))


def test_write_volume_leaves_no_temporaries(tmp_path, data):
    write_volume(f"{tmp_path}/o.zarr/seg", data)
    write_volume(f"{tmp_path}/o.zarr/seg", data + 1, overwrite=True)
    write_volume(f"{tmp_path}/f.h5:seg", data)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.h5", "o.zarr"]
    np.testing.assert_array_equal(open_volume(f"{tmp_path}/o.zarr/seg")[...], data + 1)


def test_bounding_boxes():
    a = BoundingBox.parse("0,0,0:10,20,30")
    assert a.size == (10, 20, 30) and str(a) == "0,0,0:10,20,30"
    b = BoundingBox((5, 5, 5), (10, 10, 10))
    assert a.intersection(b) == BoundingBox((5, 5, 5), (5, 10, 10))
    assert BoundingBox((50, 0, 0), (1, 1, 1)).intersection(a) is None
    assert b.clip((8, 100, 100)) == BoundingBox((5, 5, 5), (3, 10, 10))
    assert a.contains(BoundingBox((1, 1, 1), (2, 2, 2))) and not a.contains(b)
    assert b.grow(2) == BoundingBox((3, 3, 3), (14, 14, 14))
    assert a.to_slices() == (slice(0, 10), slice(0, 20), slice(0, 30))
    with pytest.raises(DataError, match="z0,y0,x0:z1,y1,x1"):
        BoundingBox.parse("0,0,0-10,10,10")
    with pytest.raises(DataError, match="empty"):
        BoundingBox.parse("5,0,0:5,10,10")


@pytest.mark.parametrize("dst", ["out.h5:seg", "out.zarr/seg", "precomputed://pc", "out.n5/seg"])
def test_export_copies_blockwise_into_every_writable_format(tmp_path, dst):
    from neuroflood.cli import main

    labels = np.random.default_rng(1).integers(0, 2**40, size=(10, 13, 7), dtype=np.uint64)
    write_volume(f"{tmp_path}/src.zarr/seg", labels)
    target = f"precomputed://{tmp_path}/pc" if dst.startswith("precomputed") else f"{tmp_path}/{dst}"
    assert main(["export", f"{tmp_path}/src.zarr/seg", target, "--block", "4,5,6"]) == 0
    np.testing.assert_array_equal(open_volume(target)[...], labels)
    assert main(["export", f"{tmp_path}/src.zarr/seg", target]) == 2  # exists: refused
