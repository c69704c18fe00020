"""`neuroflood mesh`: meshes on the segments' surfaces, blockwise = one block, skeletons that
parse, the precomputed volume, 3-D pictures, the viewer's source, and bad inputs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage
from scipy.spatial import cKDTree

from badinput import Case, check_refused
from neuroflood.cli import main
from neuroflood.mesh.build import write_meshes
from neuroflood.mesh.precomputed import read_segment_mesh, read_segment_sizes, read_skeleton
from neuroflood.volume import open_volume, write_volume

VOXEL = (12.0, 8.0, 6.0)  # z, y, x nm: anisotropic, so a swapped axis shows


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    """(spec, labels) of a 24×40×36 synthetic label volume with an anisotropic voxel size."""
    from neuroflood.synthetic import make_em_volume

    _, labels = make_em_volume((24, 40, 36), seed=1)
    spec = f"{tmp_path_factory.mktemp('mesh')}/v.h5:labels"
    write_volume(spec, labels, attrs={"resolution_nm_zyx": list(VOXEL)})
    return spec, labels


def _boundary_centres(mask: np.ndarray) -> np.ndarray:
    """Centres (x, y, z nm) of the voxels of ``mask`` with a 6-neighbour outside it (or outside the volume)."""
    inner = ndimage.binary_erosion(np.pad(mask, 1))[1:-1, 1:-1, 1:-1]
    zyx = np.argwhere(mask & ~inner)
    return ((zyx + 0.5) * np.asarray(VOXEL))[:, ::-1]


def _area(vertices: np.ndarray, faces: np.ndarray) -> float:
    t = vertices[faces].astype(np.float64)
    return float(np.linalg.norm(np.cross(t[:, 1] - t[:, 0], t[:, 2] - t[:, 0]), axis=1).sum() / 2)


@pytest.mark.parametrize("reduction", [0, 8])
def test_vertices_lie_on_the_segments_surface(labelled, tmp_path, reduction):
    spec, labels = labelled
    out = tmp_path / "o.precomputed"
    write_meshes(spec, out, block_size=16, reduction_factor=reduction, picture_segments=0)
    segment, voxels = read_segment_sizes(out)[0]
    mask = labels == segment
    assert voxels == mask.sum()
    vertices, faces = read_segment_mesh(out, segment)
    assert len(faces) > 100 and faces.max() < len(vertices)
    distance, _ = cKDTree(_boundary_centres(mask)).query(vertices)
    # marching cubes puts a vertex halfway between a boundary voxel's centre and its outside
    # neighbour's; simplification moves it by about half the smallest voxel edge more
    assert distance.max() <= (0.5 * max(VOXEL) if reduction == 0 else max(VOXEL)) + 1e-3
    if reduction == 0:  # the surface sits on the voxel faces: its extent is the voxels' box
        zyx = np.argwhere(mask)
        np.testing.assert_allclose(vertices.min(0), (zyx.min(0) * VOXEL)[::-1], atol=1e-3)
        np.testing.assert_allclose(vertices.max(0), ((zyx.max(0) + 1) * VOXEL)[::-1], atol=1e-3)


def test_blockwise_fragments_cover_the_same_surface_as_one_block(labelled, tmp_path):
    spec, labels = labelled
    dense: dict[int, np.ndarray] = {}  # unsimplified single-block vertices: samples of the surface
    for reduction in (0, 8):
        one, many = tmp_path / f"one{reduction}", tmp_path / f"many{reduction}"
        write_meshes(spec, one, block_size=64, reduction_factor=reduction, picture_segments=0)
        write_meshes(spec, many, block_size=10, reduction_factor=reduction, picture_segments=0)
        for segment, _ in read_segment_sizes(one):
            manifest = json.loads((many / "mesh" / f"{segment}:0").read_text())
            assert len(manifest["fragments"]) > 1 and all((many / "mesh" / f).is_file() for f in manifest["fragments"])
            v1, f1 = read_segment_mesh(one, segment)
            vn, fn = read_segment_mesh(many, segment)
            if reduction == 0:  # the same triangles, cut into blocks
                assert len(f1) == len(fn)
                assert {tuple(v) for v in np.round(v1, 3)} == {tuple(v) for v in np.round(vn, 3)}
                assert _area(vn, fn) == pytest.approx(_area(v1, f1), rel=1e-6)
                dense[segment] = v1
            else:  # simplified block by block: the same surface, within a voxel, of the same area
                assert _area(vn, fn) == pytest.approx(_area(v1, f1), rel=0.05)
                assert cKDTree(dense[segment]).query(vn)[0].max() <= max(VOXEL)


def test_the_output_is_a_precomputed_segmentation_with_meshes(labelled, tmp_path):
    spec, labels = labelled
    out = tmp_path / "o.precomputed"
    assert main(["mesh", spec, "--out", str(out), "--block-size", "16", "--no-progress"]) == 0
    info = json.loads((out / "info").read_text())
    assert info["type"] == "segmentation" and info["mesh"] == "mesh" and "skeletons" not in info
    assert info["scales"][0]["resolution"] == list(VOXEL[::-1])
    assert json.loads((out / "mesh" / "info").read_text()) == {"@type": "neuroglancer_legacy_mesh"}
    np.testing.assert_array_equal(open_volume(f"precomputed://{out}")[...], labels)
    sizes = dict(read_segment_sizes(out))
    ids, counts = np.unique(labels[labels != 0], return_counts=True)
    assert sizes == dict(zip(ids.tolist(), counts.tolist()))
    assert {p.name for p in (out / "mesh").glob("*:0")} == {f"{i}:0" for i in ids}
    picture = np.asarray(__import__("PIL.Image").Image.open(out / "largest_segments.png").convert("RGB"))
    assert picture.std() > 20  # drawn, not blank
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.precomputed"]  # no temporary or lock left
    # an earlier output of the command is replaced with --overwrite, keeping one directory
    box = "4,8,6:20,30,30"
    assert main(["mesh", spec, "--out", str(out), "--bbox", box, "--overwrite", "--no-progress"]) == 0
    data = open_volume(f"precomputed://{out}")[...]
    np.testing.assert_array_equal(data[4:20, 8:30, 6:30], labels[4:20, 8:30, 6:30])
    assert data.sum() == labels[4:20, 8:30, 6:30].sum()  # empty outside the box, same coordinates
    segment = read_segment_sizes(out)[0][0]
    vertices, _ = read_segment_mesh(out, segment)
    slack = min(VOXEL)  # simplification moves a vertex by about half of it (max_error)
    assert (vertices.min(0) >= np.array([6, 8, 4]) * VOXEL[::-1] - slack).all()
    assert (vertices.max(0) <= np.array([30, 30, 20]) * VOXEL[::-1] + slack).all()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.precomputed"]


def test_skeletons_parse_and_join_across_blocks(tmp_path):
    pytest.importorskip("kimimaro")
    labels = np.zeros((20, 20, 60), np.uint32)
    zz, yy = np.mgrid[:20, :20]
    labels[((zz - 10) ** 2 + (yy - 9) ** 2 <= 9), 4:56] = 7  # a tube along x through four blocks
    labels[2:6, 2:6, 2:6] = 3
    spec = f"{tmp_path}/t.h5:labels"
    write_volume(spec, labels, attrs={"resolution_nm_zyx": list(VOXEL)})
    out = tmp_path / "t.precomputed"
    assert main(["mesh", spec, "--out", str(out), "--skeletons", "--block-size", "16", "--no-progress"]) == 0
    assert json.loads((out / "info").read_text())["skeletons"] == "skeletons"
    info = json.loads((out / "skeletons" / "info").read_text())
    assert info["@type"] == "neuroglancer_skeletons"
    assert info["vertex_attributes"] == [{"id": "radius", "data_type": "float32", "num_components": 1}]
    vertices, edges, radius = read_skeleton(out, 7)  # checks the byte count against the info
    assert len(edges) and edges.max() < len(vertices) and (radius > 0).all()
    # every vertex lies in the tube, and the block pieces joined into one stretch along it
    zyx = np.floor(vertices[:, ::-1] / VOXEL).astype(int)
    assert (labels[tuple(zyx.T)] == 7).all()
    n_parts, _ = __import__("scipy.sparse.csgraph", fromlist=["x"]).connected_components(
        __import__("scipy.sparse", fromlist=["x"]).coo_matrix((np.ones(len(edges)), tuple(edges.T)), shape=(len(vertices),) * 2)
    )
    assert n_parts == 1
    assert np.ptp(vertices[:, 0]) >= 0.8 * 52 * VOXEL[2]


def test_evaluate_draws_the_largest_segments_the_worst_merge_and_split(tmp_path):
    from neuroflood.evaluate.metrics import contingency_table, segmentation_metrics
    from neuroflood.evaluate.views3d import vi_contributions
    from neuroflood.synthetic import make_em_volume

    image, gt = make_em_volume((24, 40, 40), seed=1)
    ids, counts = np.unique(gt[gt != 0], return_counts=True)
    a, b, c = ids[np.argsort(-counts)[:3]]
    seg = gt.copy()
    seg[seg == b] = a  # one merge of two large objects
    seg[(gt == c) & (np.arange(40)[None, None, :] >= np.median(np.argwhere(gt == c)[:, 2]))] = 999  # one split
    data = tmp_path / "d.h5"
    write_volume(f"{data}:gt", gt)
    write_volume(f"{data}:seg", seg.astype(np.uint32))
    table = contingency_table(seg, gt)
    metrics = segmentation_metrics(table)
    (merge_ids, merge_bits, _), (split_ids, split_bits, _) = vi_contributions(table)
    assert merge_bits.sum() == pytest.approx(metrics["vi_merge_segmented"])
    assert split_bits.sum() == pytest.approx(metrics["vi_split_segmented"])
    out = tmp_path / "ev"
    assert main(["evaluate", f"{data}:seg", f"{data}:gt", "--out", str(out), "--render-3d", "3"]) == 0
    shown = json.loads((out / "metrics.json").read_text())["views_3d"]
    assert shown["worst_merge"]["segment"] == a and shown["worst_merge"]["n_gt_objects"] == 2
    assert shown["worst_split"]["gt_object"] == c and shown["worst_split"]["n_segments"] == 2
    assert len(shown["largest_segments"]) == 3
    picture = np.asarray(__import__("PIL.Image").Image.open(out / "views_3d.png").convert("RGB")).astype(int)
    assert ((picture.max(-1) - picture.min(-1)) > 60).mean() > 0.03  # coloured meshes in it
    assert "views_3d.png" in (out / "report.md").read_text()


def test_view_serves_a_mesh_output_as_a_precomputed_source(labelled, tmp_path):
    pytest.importorskip("neuroglancer")
    from neuroflood.evaluate.viewer import make_viewer

    spec, labels = labelled
    out = tmp_path / "o.precomputed"
    write_meshes(spec, out, block_size=32, picture_segments=0)
    viewer, _ = make_viewer(spec, [f"precomputed://{out}"], mesh_segments=2)
    layer = viewer.state.layers["o.precomputed"]
    assert [int(s) for s in layer.segments] == sorted(s for s, _ in read_segment_sizes(out)[:2])
    base = layer.source[0].url.removeprefix("precomputed://")
    with urllib.request.urlopen(f"{base}/info", timeout=30) as r:
        assert json.loads(r.read())["mesh"] == "mesh"
    segment = read_segment_sizes(out)[0][0]
    with urllib.request.urlopen(f"{base}/mesh/{segment}:0", timeout=30) as r:
        assert json.loads(r.read())["fragments"]
    assert list(viewer.state.dimensions.scales) == [6e-9, 8e-9, 12e-9]


# -- bad inputs -------------------------------------------------------------------------------

_HOLDER = """
import sys
from neuroflood.outputs import exclusive
with exclusive(sys.argv[1], "--out (held by the test)"):
    print("held", flush=True)
    sys.stdin.read()
"""
_holders: list[subprocess.Popen] = []


def _labels(d: Path, data: np.ndarray | None = None) -> None:
    write_volume(f"{d}/s.h5:seg", np.arange(64, dtype=np.uint32).reshape(4, 4, 4) % 3 if data is None else data)


def _user_dir(d: Path) -> None:
    _labels(d)
    (d / "o.precomputed").mkdir()
    (d / "o.precomputed" / "notes.txt").write_text("mine")


def _held(d: Path) -> None:
    _labels(d)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    proc = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(d / "o.precomputed")], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env
    )
    _holders.append(proc)
    assert proc.stdout.readline().strip() == "held"


MESH = ["mesh", "{d}/s.h5:seg", "--out", "{d}/o.precomputed", "--no-progress"]
CASES = [
    Case("missing-seg", ["mesh", "{d}/nope.h5:seg", "--out", "{d}/o.precomputed"], r"nope\.h5 does not exist"),
    Case("empty-seg", MESH, r"holds no segment \(every voxel is 0\).*ids > 0", setup=lambda d: _labels(d, np.zeros((8, 8, 8), np.uint16))),
    Case(
        "empty-in-bbox",
        [*MESH, "--bbox", "0,0,0:2,2,2"],
        r"every voxel inside --bbox 0,0,0:2,2,2 is 0",
        setup=lambda d: _labels(d, np.pad(np.ones((2, 2, 2), np.uint8), ((4, 0), (0, 0), (0, 0)))),
    ),
    Case("float-seg", MESH, r"dtype float32; give a 3-D integer label volume", setup=lambda d: _labels(d, np.ones((4, 4, 4), np.float32))),
    Case("negative-labels", MESH, r"negative labels", setup=lambda d: _labels(d, -np.ones((4, 4, 4), np.int32))),
    Case("block-size-zero", [*MESH, "--block-size", "0"], r"--block-size 0 must be >= 1", setup=_labels),
    Case("bbox-outside", [*MESH, "--bbox", "0,0,0:9,4,4"], r"--bbox 0,0,0:9,4,4 reaches outside", setup=_labels),
    Case("out-exists", MESH, r"o\.precomputed exists; .*pass --overwrite", setup=_user_dir),
    Case("out-is-a-users-dir", [*MESH, "--overwrite"], r"was not written by neuroflood mesh", setup=_user_dir),
    Case("out-is-the-input", ["mesh", "{d}/s.h5:seg", "--out", "{d}/s.h5", "--overwrite"], r"holds an input of this run", setup=_labels),
    Case("second-run", MESH, r"another neuroflood run is writing --out", setup=_held),
]


@pytest.mark.parametrize("case", [c.param() for c in CASES])
def test_bad_input(case, tmp_path, capsys):
    try:
        check_refused(case, tmp_path, capsys)
    finally:
        while _holders:
            proc = _holders.pop()
            proc.stdin.close()
            proc.wait(30)


def test_decimate_returns_on_a_small_mesh_of_a_1nm_volume():
    """zmesh 1.15's simplify never returned on this 610-triangle mesh (a 163-voxel segment of
    the tiny demo, 1-nm voxels, 11 units across); decimate scales it first. In a subprocess:
    a hang in C ignores SIGTERM, and the timeout kills it."""
    import subprocess
    import sys
    from pathlib import Path

    data = Path(__file__).parent / "data" / "zmesh_small_segment.npz"
    code = (
        "import numpy as np; from neuroflood.mesh.render import decimate; "
        f"d = np.load({str(data)!r}); v, f = decimate(d['v'].astype(float), d['f'], 200); "
        "assert 0 < len(f) <= 200 and np.isfinite(v).all(); print(len(f))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-500:]
