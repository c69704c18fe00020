"""Browser test: neuroglancer draws the meshes of a ``neuroflood mesh`` output in its 3-D panel.

The output is served as a ``precomputed://`` source by ``neuroflood view``'s static file server;
headless Chromium (software WebGL) loads it. The 3-D panel is shown alone, without the
cross-section planes it draws by default, so that every non-background pixel is a mesh; with no
segment selected it must be empty (the control), with the largest selected it must not.
Screenshots go to ``test-artifacts/browser/``. Skips without chromium/chromedriver unless
``NEUROFLOOD_REQUIRE_BROWSER=1``.
"""

from __future__ import annotations

import time

import numpy as np
import pytest

from neuroflood.volume import write_volume
from test_browser import ARTIFACTS, browser  # noqa: F401  (the fixture)

pytest.importorskip("neuroglancer")


def _panel_pixels(driver) -> np.ndarray:
    """The screenshot cropped to the 3-D panel (its canvas rectangle, in device pixels)."""
    rect = driver.run(
        "const p = document.querySelector('.neuroglancer-rendered-data-panel');"
        "if (!p) return null; const r = p.getBoundingClientRect();"
        "return [r.left, r.top, r.width, r.height, window.devicePixelRatio];"
    )
    pixels = driver.screenshot()
    if rect is None:
        return pixels[:0, :0]
    left, top, width, height, ratio = (float(v) for v in rect)
    y0, x0 = int(top * ratio) + 2, int(left * ratio) + 2
    return pixels[y0 : int((top + height) * ratio) - 2, x0 : int((left + width) * ratio) - 2]


def _drawn_fraction(panel: np.ndarray) -> float:
    """Fraction of panel pixels that differ from its background colour (its corner pixel)."""
    if not panel.size:
        return 0.0
    background = panel[2, 2].astype(int)
    return float((np.abs(panel.astype(int) - background).sum(-1) > 30).mean())


def test_meshes_render_in_the_3d_panel(browser, tmp_path):  # noqa: F811
    from neuroflood.cli import main
    from neuroflood.evaluate.viewer import make_viewer
    from neuroflood.synthetic import make_em_volume

    image, labels = make_em_volume((32, 48, 48), seed=2)
    data = tmp_path / "v.h5"
    write_volume(f"{data}:image", image, attrs={"resolution_nm_zyx": [8, 8, 8]})
    write_volume(f"{data}:labels", labels, attrs={"resolution_nm_zyx": [8, 8, 8]})
    out = tmp_path / "seg.precomputed"
    assert main(["mesh", f"{data}:labels", "--out", str(out), "--block-size", "24", "--no-progress"]) == 0

    viewer, url = make_viewer(f"{data}:image", [str(out)], mesh_segments=3)
    layer = viewer.state.layers["seg.precomputed"]
    assert layer.source[0].url.startswith("precomputed://http://127.0.0.1:")
    largest = sorted(int(s) for s in layer.segments)
    assert len(largest) == 3
    with viewer.txn() as state:
        state.layout = "3d"
        state.show_slices = False  # only meshes may draw in the panel
        state.show_default_annotations = False  # nor the volume's outline
        state.layers["seg.precomputed"].segments = []
    browser.get(url)
    time.sleep(4)
    empty = _panel_pixels(browser)
    _save(empty, "mesh_3d_none_selected.png")
    assert empty.shape[0] > 100 and empty.shape[1] > 100, "no 3-D panel on the page"
    assert _drawn_fraction(empty) < 0.01, "the 3-D panel draws something with no segment selected"

    with viewer.txn() as state:
        state.layers["seg.precomputed"].segments = largest
    deadline, panel = time.time() + 60, empty
    while time.time() < deadline:  # manifests, then fragments arrive over HTTP
        time.sleep(1.0)
        panel = _panel_pixels(browser)
        if _drawn_fraction(panel) > 0.05:
            break
    _save(panel, "mesh_3d.png")
    assert _drawn_fraction(panel) > 0.05, "the 3-D panel shows no mesh of the selected segments"
    colours = panel.reshape(-1, 3).astype(int)
    assert (colours.max(1) - colours.min(1) > 60).mean() > 0.02, "the meshes are not drawn in segment colours"


def _save(pixels: np.ndarray, name: str) -> None:
    from PIL import Image

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(ARTIFACTS / name)
