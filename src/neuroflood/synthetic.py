"""EM-like synthetic volumes with dense ground truth, for tests, benchmarks and the demo.

A volume is made in four steps, all driven by one seeded generator:

1. **Neurites.** Random-walk skeletons with persistent direction cross the volume; some
   branch. Each process gets a calibre (radius) and is drawn as a chain of balls.
2. **Dense labels.** Every voxel belongs to its nearest drawn process (a Euclidean
   nearest-feature transform), so processes are densely packed and touch, as in neuropil,
   and thick processes claim more space than thin ones.
3. **Image.** Per-process cytoplasm grey levels with smooth texture, dark membranes where
   labels change (about two voxels thick), a few darker organelle-like blobs with a dark rim,
   then blur and noise.
4. **Types.** ``uint8`` image, ``uint64`` labels, ids 1..N (0 never occurs).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage

from .errors import DataError


@dataclass(frozen=True)
class SynthParams:
    """Knobs of the generator; the defaults give a moderately easy volume."""

    density: float = 3.0  # processes per (32 voxel)^2 of cross-section
    radius_range: tuple[float, float] = (1.0, 4.0)  # process calibre, voxels
    branch_prob: float = 0.25  # chance that a process spawns a branch
    persistence: float = 0.92  # direction memory of the skeleton random walk (0..1)
    membrane_contrast: float = 1.0  # 0 = invisible membranes, 1 = FIB-25-like
    membrane_width: float = 1.0  # half-thickness of membranes, voxels
    organelles: float = 1.0  # dark blobs per 32^3
    noise: float = 8.0  # std of Gaussian noise, grey levels
    blur: float = 0.9  # Gaussian blur sigma, voxels

    def check(self) -> None:
        """Raise DataError for a knob outside its range (NaN included)."""
        limits = {
            "density": (0.0, 100.0, False),
            "membrane_contrast": (0.0, 1.0, True),
            "membrane_width": (0.0, 10.0, True),
            "organelles": (0.0, 100.0, True),
            "noise": (0.0, 255.0, True),
            "blur": (0.0, 10.0, True),
            "branch_prob": (0.0, 1.0, True),
            "persistence": (0.0, 1.0, True),
        }
        for name, (lo, hi, lo_ok) in limits.items():
            v = getattr(self, name)
            ok = isinstance(v, (int, float)) and np.isfinite(v) and (lo <= v if lo_ok else lo < v) and v <= hi
            if not ok:
                bound = "[" if lo_ok else "("
                raise DataError(f"synthetic {name} {v!r} must be a number in {bound}{lo:g}, {hi:g}]")
        lo_r, hi_r = self.radius_range
        if not (np.isfinite(lo_r) and np.isfinite(hi_r) and 0 < lo_r <= hi_r <= 64):
            raise DataError(f"synthetic radius_range {self.radius_range} must satisfy 0 < min <= max <= 64")


# Peak memory of make_em_volume per voxel: int32 seeds and labels, float32 and float64
# working images, the distance transform's indices (3 x int32) and the uint64 labels.
_BYTES_PER_VOXEL = 64


def _available_memory() -> int:
    """Bytes of memory available now (MemAvailable), or a generous guess where unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 1 << 40


def make_em_volume(
    shape: Sequence[int] = (128, 128, 128),
    seed: int = 0,
    params: SynthParams | None = None,
    **overrides: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Generate ``(image uint8, labels uint64)`` of ``shape`` (z, y, x), deterministically.

    Keyword overrides set fields of :class:`SynthParams`, e.g. ``noise=12``.
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3 or min(shape) < 8:
        raise DataError(f"synthetic shape {shape} must be 3 sizes >= 8 (z,y,x)")
    p = params or SynthParams()
    if overrides:
        p = SynthParams(**{**asdict(p), **overrides})
    p.check()
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise DataError(f"synthetic seed {seed!r} must be a non-negative integer")
    need = int(np.prod(shape)) * _BYTES_PER_VOXEL
    if need > _available_memory():
        raise DataError(
            f"a synthetic volume of shape {shape} needs about {need / 2**30:.1f} GiB of memory, more than "
            f"this machine has free ({_available_memory() / 2**30:.1f} GiB); choose a smaller --shape"
        )
    rng = np.random.default_rng(seed)
    seeds = _draw_processes(shape, p, rng)
    labels = _nearest_label(seeds)
    image = _render(labels, p, rng)
    return image, labels.astype(np.uint64)


# ----------------------------------------------------------------------------------------


def _draw_processes(shape: tuple[int, ...], p: SynthParams, rng: np.random.Generator) -> np.ndarray:
    """An int32 volume, 0 = empty, k = voxel on process k's tube core."""
    seeds = np.zeros(shape, np.int32)
    area = np.mean([shape[0] * shape[1], shape[1] * shape[2], shape[0] * shape[2]])
    n = max(3, int(round(p.density * area / 32**2 * 2.5)))
    next_id = 1
    for _ in range(n):
        # Start on a random face and head inwards, so processes cross the volume.
        pos = rng.uniform(0, 1, 3) * np.array(shape)
        axis = rng.integers(3)
        pos[axis] = 0 if rng.random() < 0.5 else shape[axis] - 1
        direction = rng.normal(size=3)
        direction[axis] = abs(direction[axis]) * 2.5 * (1 if pos[axis] == 0 else -1)
        radius = rng.uniform(*p.radius_range)
        stack = [(pos, direction, radius, next_id)]
        next_id += 1
        while stack:
            pos, direction, radius, pid = stack.pop()
            for branch in _walk(seeds, pos, direction, radius, pid, p, rng):
                # A branch leaves at an angle and is thinner than its parent.
                bdir = branch[1] + rng.normal(size=3) * 1.2
                stack.append((branch[0], bdir, max(p.radius_range[0], branch[2] * rng.uniform(0.5, 0.9)), pid))
    if next_id == 1 or not seeds.any():
        raise DataError("synthetic volume has no processes; raise density")
    return seeds


def _walk(seeds, pos, direction, radius, pid, p: SynthParams, rng) -> list:
    """Draw one process until it leaves the volume; return branch start points."""
    shape = np.array(seeds.shape)
    direction = direction / (np.linalg.norm(direction) + 1e-9)
    branches = []
    steps = int(3 * shape.max())
    ball = _ball(radius)
    r = ball.shape[0] // 2
    branch_at = rng.integers(steps // 6, steps // 2) if rng.random() < p.branch_prob else -1
    for step in range(steps):
        if step % max(1, int(radius / 2)) == 0:
            _stamp(seeds, np.round(pos).astype(int), ball, r, pid)
        if step == branch_at:
            branches.append((pos.copy(), direction.copy(), radius))
        direction = p.persistence * direction + (1 - p.persistence) * rng.normal(size=3) * 1.5
        direction /= np.linalg.norm(direction) + 1e-9
        pos = pos + direction
        if np.any(pos < -radius) or np.any(pos > shape - 1 + radius):
            break
        radius = float(np.clip(radius * np.exp(rng.normal(0, 0.01)), *p.radius_range))
    return branches


def _ball(radius: float) -> np.ndarray:
    r = max(0, int(np.ceil(radius * 0.5)))  # cores are half the calibre: cells fill the rest
    g = np.mgrid[-r : r + 1, -r : r + 1, -r : r + 1]
    return (g**2).sum(0) <= max(r, 0.5) ** 2 + 0.5


def _stamp(vol: np.ndarray, c: np.ndarray, ball: np.ndarray, r: int, value: int) -> None:
    lo = c - r
    hi = c + r + 1
    src_lo = np.maximum(0, -lo)
    src_hi = ball.shape[0] - np.maximum(0, hi - np.array(vol.shape))
    lo = np.maximum(lo, 0)
    hi = np.minimum(hi, vol.shape)
    if np.any(hi <= lo):
        return
    dst = vol[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]]
    m = ball[src_lo[0] : src_hi[0], src_lo[1] : src_hi[1], src_lo[2] : src_hi[2]]
    dst[m & (dst == 0)] = value


def _nearest_label(seeds: np.ndarray) -> np.ndarray:
    """Assign every voxel the id of its nearest process core, then renumber 1..N."""
    _, idx = ndimage.distance_transform_edt(seeds == 0, return_indices=True)
    labels = seeds[tuple(idx)]
    # A process's territory can be cut into pieces by its neighbours; keep each label's
    # largest piece and give the crumbs to the nearest other territory, so every ground-truth
    # object is one 6-connected component.
    import cc3d

    cc = cc3d.connected_components(labels, connectivity=6)
    sizes = np.bincount(cc.ravel())
    owner = np.zeros(len(sizes), labels.dtype)
    owner[cc.ravel()] = labels.ravel()
    best = np.zeros(int(labels.max()) + 1, np.int64)
    order = np.argsort(sizes)  # ascending: the largest piece of each label is written last
    best[owner[order]] = order
    crumbs = np.ones(len(sizes), bool)
    crumbs[best[np.unique(labels)]] = False
    mask = crumbs[cc]
    if mask.any():
        _, idx = ndimage.distance_transform_edt(mask, return_indices=True)
        labels = labels[tuple(idx)]
    _, inverse = np.unique(labels, return_inverse=True)
    return inverse.reshape(labels.shape).astype(np.int64) + 1


def _boundaries(labels: np.ndarray) -> np.ndarray:
    b = np.zeros(labels.shape, bool)
    for ax in range(3):
        d = np.diff(labels, axis=ax) != 0
        lo = [slice(None)] * 3
        hi = [slice(None)] * 3
        lo[ax] = slice(0, -1)
        hi[ax] = slice(1, None)
        b[tuple(lo)] |= d
        b[tuple(hi)] |= d
    return b


def _render(labels: np.ndarray, p: SynthParams, rng: np.random.Generator) -> np.ndarray:
    shape = labels.shape
    n = int(labels.max())
    # Cytoplasm: a grey level per process plus smooth texture (FIB-25 interiors ~ 130-170).
    level = rng.normal(150, 12, n + 1).astype(np.float32)
    img = level[labels]
    texture = ndimage.gaussian_filter(rng.normal(0, 1, shape).astype(np.float32), 1.5)
    img += texture * (10 / (texture.std() + 1e-6))
    # Organelles: dark blobs with a darker rim, inside processes.
    n_org = int(round(p.organelles * np.prod(shape) / 32**3))
    if n_org:
        blobs = np.zeros(shape, np.float32)
        centers = (rng.uniform(0, 1, (n_org, 3)) * np.array(shape)).astype(int)
        radii = rng.uniform(2, 4.5, n_org)
        for c, r in zip(centers, radii):
            ri = int(np.ceil(r)) + 1
            sl = tuple(slice(max(0, ci - ri), min(s, ci + ri + 1)) for ci, s in zip(c, shape))
            g = np.mgrid[sl]
            d = np.sqrt(sum((gi - ci) ** 2 for gi, ci in zip(g, c))) / r
            blobs[sl] = np.maximum(blobs[sl], np.clip(1.2 - d, 0, 1))
        img -= 45 * np.clip(blobs * 2, 0, 1)
    # Membranes: dark where labels change, smoothed into a ~2-voxel band.
    membrane = _boundaries(labels).astype(np.float32)
    if p.membrane_width > 1:
        membrane = ndimage.binary_dilation(membrane > 0, iterations=int(p.membrane_width) - 1).astype(np.float32)
    membrane = ndimage.gaussian_filter(membrane, 0.6)
    img -= p.membrane_contrast * 95 * np.clip(membrane * 1.6, 0, 1)
    if p.blur > 0:
        img = ndimage.gaussian_filter(img, p.blur)
    img += rng.normal(0, p.noise, shape).astype(np.float32)
    return np.clip(np.round(img), 0, 255).astype(np.uint8)


SYNTH_MARK = "neuroflood_output"


def write_synthetic(path: str, image: np.ndarray, labels: np.ndarray) -> None:
    """Write ``image`` and ``labels`` as a new HDF5 file at ``path``, atomically.

    The file is written whole under a temporary name beside ``path`` and renamed when
    complete; its root attribute ``neuroflood_output = "synth"`` lets a later ``synth
    --overwrite`` recognise it as its own.
    """
    import os
    import tempfile

    import h5py

    from .atomic import normal_permissions
    from .volume import default_chunks

    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp.h5", dir=folder)
    os.close(fd)
    try:
        with h5py.File(tmp, "w") as f:
            for name, data in (("image", image), ("labels", labels)):
                f.create_dataset(name, data=data, chunks=default_chunks(data.shape), compression="gzip")
            f.attrs[SYNTH_MARK] = "synth"
        normal_permissions(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def made_by_synth(path: str) -> bool:
    """Whether ``path`` is an HDF5 file that :func:`write_synthetic` wrote."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            return f.attrs.get(SYNTH_MARK) == "synth"
    except (OSError, ValueError):
        return False
