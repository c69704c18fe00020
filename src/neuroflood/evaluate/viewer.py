"""``neuroflood view IMG [SEG …]``: look at volumes in neuroglancer, served from this machine.

Any volume spec that :func:`~neuroflood.volume.open_volume` reads works. Volumes up to
``max_memory_mb`` are loaded into memory (neuroglancer then also builds 3-D meshes of
selected segments); larger ones are read lazily, chunk by chunk, as the browser asks.

A segmentation written by ``neuroflood mesh`` (its directory, or ``precomputed://`` and its
directory) is served as it is, files and all, by a second small server on the same address,
and shown with its precomputed meshes: its largest segments are selected, so that the 3-D
panel draws them at once.

The server binds to 127.0.0.1 unless told otherwise: a remote user forwards the port
(``ssh -L PORT:127.0.0.1:PORT host``) rather than exposing data on every interface. The
neuroglancer client is served from the installed package, so no internet access is needed.
neuroglancer is an optional dependency: ``pip install 'neuroflood[viewer]'``.
"""

from __future__ import annotations

import errno
import os
import socket
import time
from collections.abc import Sequence
from pathlib import PurePath
from typing import Any

import numpy as np

from ..errors import ConfigError, DataError
from ..volume import open_volume
from .inputs import voxel_size_of

__all__ = ["make_viewer", "serve", "check_address"]


def _neuroglancer() -> Any:
    try:
        import neuroglancer
    except ImportError:
        raise ConfigError("neuroglancer is not installed; run: pip install 'neuroflood[viewer]'") from None
    return neuroglancer


def check_address(bind: str, port: int) -> None:
    """Raise ConfigError unless this process can serve on ``bind``:``port`` right now.

    Binds a socket and closes it again, so that a bad address, a port out of range or one in
    use is one clear line before any volume is loaded or server thread started.
    """
    if not 0 <= port <= 65535:
        raise ConfigError(f"--port {port} is not a TCP port; give 1..65535, or 0 for any free port")
    try:
        infos = socket.getaddrinfo(bind, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (socket.gaierror, UnicodeError) as e:
        raise ConfigError(f"--bind {bind!r} is not an address of this machine ({e}); use 127.0.0.1 or 0.0.0.0") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server does: TIME_WAIT is no conflict
        try:
            s.bind(address)
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise ConfigError(
                    f"port {port} on {bind} is in use by another program; choose another --port, or 0 for any free port"
                ) from None
            if e.errno in (errno.EACCES, errno.EPERM):
                raise ConfigError(
                    f"port {port} on {bind} needs privileges (ports below 1024 do); choose a --port of 1024 or more"
                ) from None
            raise ConfigError(
                f"cannot serve on {bind}:{port} ({e.strerror or e}); use --bind 127.0.0.1 or an address of this machine"
            ) from None


def make_viewer(
    image: str,
    segmentations: Sequence[str] = (),
    bind: str = "127.0.0.1",
    port: int = 0,
    voxel_size: Sequence[float] | None = None,
    max_memory_mb: float = 2048,
    mesh_segments: int = 10,
) -> tuple[Any, str]:
    """Start a neuroglancer viewer showing ``image`` and ``segmentations``; returns (viewer, url).

    Parameters
    ----------
    image, segmentations : str
        Volume specs; segmentations must have integer dtypes.
    bind, port : str, int
        Address and port of the server (port 0: any free port).
    voxel_size : sequence of 3 floats, optional
        z, y, x in nm; default: the image's ``resolution_nm_zyx`` attribute, else 1.
    max_memory_mb : float
        Volumes up to this size are loaded into memory; larger ones are read lazily.
    mesh_segments : int
        How many of the largest segments of a ``neuroflood mesh`` output to select.
    """
    ng = _neuroglancer()
    check_address(bind, port)
    img = open_volume(image)
    meshed = {spec: _mesh_output(spec) for spec in segmentations}
    segs = [open_volume(f"precomputed://{meshed[s]}" if meshed[s] else s) for s in segmentations]
    for spec, vol in zip([image, *segmentations], [img, *segs]):
        if len(vol.shape) != 3:
            raise DataError(f"{spec} has shape {tuple(vol.shape)}; neuroflood view shows 3-D (z,y,x) volumes")
    for spec, vol in zip(segmentations, segs):
        if vol.dtype.kind not in "iu":
            raise DataError(f"segmentation {spec} has dtype {vol.dtype}, not integer labels; give a label volume")
    recorded = [_Resolution(root) for root in meshed.values() if root]  # voxel sizes in mesh outputs
    size = tuple(voxel_size) if voxel_size is not None else voxel_size_of(img, *segs, *recorded)
    dims = ng.CoordinateSpace(names=["z", "y", "x"], units="nm", scales=list(size))
    # Volumes are z,y,x; the display space is x,y,z so that the main panel shows yx sections
    # with x across, as EM viewers do (layers map onto it by dimension name).
    display = ng.CoordinateSpace(names=["x", "y", "z"], units="nm", scales=list(size[::-1]))

    ng.set_server_bind_address(bind, port)
    viewer = ng.Viewer()
    viewer.static_file_servers = []  # keeps the servers of mesh outputs alive with the viewer
    names: set[str] = set()
    with viewer.txn() as state:
        state.dimensions = display
        state.layers[_unique_name(image, names)] = ng.ImageLayer(
            source=ng.LocalVolume(_data(img, max_memory_mb), dimensions=dims, volume_type="image")
        )
        for spec, vol in zip(segmentations, segs):
            if meshed[spec]:
                state.layers[_unique_name(spec, names)] = _meshed_layer(ng, viewer, meshed[spec], bind, mesh_segments)
                continue
            state.layers[_unique_name(spec, names)] = ng.SegmentationLayer(
                source=ng.LocalVolume(_segmentation_data(vol, max_memory_mb), dimensions=dims, volume_type="segmentation")
            )
        state.position = [s / 2 for s in img.shape[::-1]]
        state.layout = "4panel"
        # zoom so that the volume fills a ~400-pixel panel (the default is 1 voxel per pixel)
        state.cross_section_scale = max(img.shape) / 400
        state.projection_scale = 1.5 * max(img.shape)
    return viewer, viewer.get_viewer_url()


def serve(image: str, segmentations: Sequence[str] = (), **kwargs: Any) -> None:
    """Start the viewer, print its URL, and serve until interrupted (Ctrl-C)."""
    _, url = make_viewer(image, segmentations, **kwargs)
    print(url, flush=True)
    print("serving; press Ctrl-C to stop", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        print("stopped", flush=True)


def _mesh_output(spec: str) -> str | None:
    """The directory of a precomputed segmentation with meshes that ``spec`` names, else None."""
    from ..mesh.precomputed import has_meshes

    path = spec[len("precomputed://") :] if spec.startswith("precomputed://") else spec
    return os.path.abspath(path) if os.path.isdir(path) and has_meshes(path) else None


class _Resolution:
    """The voxel size a mesh output records, in the form :func:`voxel_size_of` reads."""

    def __init__(self, root: str):
        import json

        try:
            with open(os.path.join(root, "info")) as f:
                scale = json.load(f)["scales"][0]
            self.attrs = {"resolution_nm_zyx": list(scale["resolution"])[::-1]}
        except (OSError, ValueError, KeyError, IndexError, TypeError):
            self.attrs = {}


def _meshed_layer(ng: Any, viewer: Any, root: str, bind: str, n_segments: int) -> Any:
    """A segmentation layer over a mesh output served by a static file server, largest segments selected."""
    from neuroglancer.static_file_server import StaticFileServer

    from ..mesh.precomputed import read_segment_sizes

    server = StaticFileServer(root, bind_address=bind, daemon=True)
    viewer.static_file_servers.append(server)
    largest = [segment for segment, _ in read_segment_sizes(root)[:n_segments]]
    return ng.SegmentationLayer(source=f"precomputed://{server.url}", segments=largest)


def _unique_name(spec: str, taken: set[str]) -> str:
    """A short layer name from a spec: the file name plus dataset, e.g. ``sample.h5:labels``."""
    base = spec.rstrip("/" + os.sep)
    base = base[len("precomputed://") :] if base.startswith("precomputed://") else base
    name = PurePath(base).name or base
    candidate, i = name, 2
    while candidate in taken:
        candidate, i = f"{name} ({i})", i + 1
    taken.add(candidate)
    return candidate


def _data(vol: Any, max_memory_mb: float) -> Any:
    if vol.size * vol.dtype.itemsize <= max_memory_mb * 2**20:
        return np.ascontiguousarray(vol[...])
    return vol  # read lazily: neuroglancer only slices it


def _segmentation_data(vol: Any, max_memory_mb: float) -> Any:
    data = _data(vol, max_memory_mb)
    if isinstance(data, np.ndarray) and data.dtype not in (np.uint8, np.uint16, np.uint32, np.uint64):
        if data.size and data.min() < 0:
            raise DataError(f"segmentation {vol.spec} has negative labels; ids must be >= 0")
        data = data.astype(np.uint64)  # neuroglancer segmentations are unsigned
    return data
