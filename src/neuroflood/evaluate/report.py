"""Reports: a self-contained ``report.html`` (PNGs embedded as base64), ``report.md`` beside
its PNG files, and ``metrics.json``, written atomically into one directory.

:class:`Report` is a tiny document model (headings, paragraphs, tables, figures) rendered to
both HTML and Markdown; :func:`write_evaluation_report` builds the report of
``neuroflood evaluate``.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import json
import os
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__
from ..atomic import atomic_file
from ..errors import ConfigError
from ..outputs import check_writable_location

__all__ = [
    "Report",
    "write_evaluation_report",
    "METRIC_DESCRIPTIONS",
    "write_atomically",
    "check_output_dir",
    "check_output_file",
    "check_writable_location",
]

# What each reported number means (shown in the reports' metrics tables).
METRIC_DESCRIPTIONS = {
    "vi": ("VI (bits)", "variation of information = split + merge; 0 is perfect"),
    "vi_split": ("VI split (bits)", "H(seg | gt): ground-truth objects cut into several segments"),
    "vi_merge": ("VI merge (bits)", "H(gt | seg): segments covering several ground-truth objects"),
    "adapted_rand_error": ("adapted Rand error", "1 − F1 of Rand precision and recall (SNEMI3D); 0 is perfect"),
    "rand_precision": ("Rand precision", "voxel pairs together in both / together in seg (merges lower it)"),
    "rand_recall": ("Rand recall", "voxel pairs together in both / together in gt (splits lower it)"),
    "voxel_accuracy": ("voxel accuracy", "labelled voxels neither merged, split off nor unsegmented"),
    "voxel_precision": ("voxel precision", "segment voxels inside the object each segment overlaps most"),
    "voxel_recall": ("voxel recall", "object voxels inside the segment that covers most of each object"),
    "voxel_f1": ("voxel F1", "harmonic mean of voxel precision and recall"),
    "segmented_fraction": ("segmented fraction", "labelled voxels with a segment (seg ≠ 0)"),
    "vi_split_segmented": ("VI split, segmented voxels", "VI split over voxels with a segment only (no coverage term)"),
    "vi_merge_segmented": ("VI merge, segmented voxels", "VI merge over voxels with a segment only"),
    "adapted_rand_error_segmented": ("adapted Rand error, segmented voxels", "adapted Rand error over voxels with a segment only"),
    "n_segments": ("segments", "distinct non-zero segment ids in the evaluated region"),
    "n_gt_objects": ("ground-truth objects", "distinct non-zero ground-truth ids"),
    "n_labelled_voxels": ("labelled voxels", "voxels with gt ≠ 0: the only voxels scored"),
    "n_unsegmented_voxels": ("unsegmented voxels", "labelled voxels with seg = 0 (scored as 1-voxel segments)"),
    "n_unlabelled_segmented_voxels": ("segmented unlabelled voxels", "seg ≠ 0 where gt = 0 (not scored)"),
}

CONVENTIONS = (
    "Ground-truth label 0 means unlabelled: those voxels are excluded from every metric. "
    "Segmentation label 0 means unsegmented: each such labelled voxel counts as its own "
    "one-voxel segment (the SNEMI3D convention), i.e. as split off from its object. "
    "VI is in bits. A merge is one segment covering several ground-truth objects; a split is "
    "one ground-truth object covered by several segments."
)


@dataclass
class Report:
    """An ordered list of blocks rendered to HTML (figures inline) and Markdown (figures as files)."""

    title: str
    blocks: list[tuple[str, Any]] = field(default_factory=list)

    def heading(self, text: str) -> None:
        self.blocks.append(("h2", text))

    def paragraph(self, text: str) -> None:
        self.blocks.append(("p", text))

    def table(self, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        self.blocks.append(("table", (list(header), [list(r) for r in rows])))

    def figure(self, name: str, png: bytes, caption: str) -> None:
        """A PNG figure; ``name`` is its file name (``name.png``) beside report.md."""
        self.blocks.append(("figure", (name, png, caption)))

    @property
    def figures(self) -> dict[str, bytes]:
        return {f"{b[1][0]}.png": b[1][1] for b in self.blocks if b[0] == "figure"}

    def to_html(self) -> str:
        parts = [
            "<!DOCTYPE html>",
            '<html lang="en"><head><meta charset="utf-8">',
            f"<title>{html.escape(self.title)}</title>",
            f"<style>{_CSS}</style></head><body>",
            f"<h1>{html.escape(self.title)}</h1>",
        ]
        for kind, value in self.blocks:
            if kind == "h2":
                parts.append(f"<h2>{html.escape(value)}</h2>")
            elif kind == "p":
                parts.append(f"<p>{html.escape(value)}</p>")
            elif kind == "table":
                header, rows = value
                parts.append("<table><thead><tr>" + "".join(f"<th>{html.escape(str(h))}</th>" for h in header) + "</tr></thead><tbody>")
                for row in rows:
                    parts.append("<tr>" + "".join(f"<td>{html.escape(_fmt(v))}</td>" for v in row) + "</tr>")
                parts.append("</tbody></table>")
            elif kind == "figure":
                name, png, caption = value
                data = base64.b64encode(png).decode("ascii")
                parts.append(
                    f'<figure><img alt="{html.escape(name)}" src="data:image/png;base64,{data}">'
                    f"<figcaption>{html.escape(caption)}</figcaption></figure>"
                )
        parts.append(f"<footer>neuroflood {__version__} · {_now()}</footer></body></html>")
        return "\n".join(parts)

    def to_markdown(self) -> str:
        lines = [f"# {self.title}", ""]
        for kind, value in self.blocks:
            if kind == "h2":
                lines += [f"## {value}", ""]
            elif kind == "p":
                lines += [value, ""]
            elif kind == "table":
                header, rows = value
                lines.append("| " + " | ".join(map(str, header)) + " |")
                lines.append("|" + "---|" * len(header))
                lines += ["| " + " | ".join(_fmt(v).replace("|", "\\|") for v in row) + " |" for row in rows]
                lines.append("")
            elif kind == "figure":
                name, _, caption = value
                lines += [f"![{name}]({name}.png)", "", f"*{caption}*", ""]
        lines.append(f"neuroflood {__version__} · {_now()}")
        return "\n".join(lines) + "\n"

    def write(self, out_dir: str | os.PathLike, command: str, extra: dict[str, bytes] | None = None) -> Path:
        """Write report.html, report.md, the PNGs and ``extra`` files into ``out_dir``.

        ``command`` (``"evaluate"``, ``"report"``) owns them: files in ``out_dir`` that another
        command or the user wrote are never replaced (:func:`neuroflood.outputs.check_files`).
        """
        from ..outputs import check_files, record_files

        files = {"report.html": self.to_html().encode(), "report.md": self.to_markdown().encode(), **self.figures}
        files.update(extra or {})
        check_output_dir(out_dir)
        check_files(out_dir, sorted(files), command)
        out = write_atomically(out_dir, files)
        record_files(out_dir, sorted(files), command)
        return out


def check_output_dir(path: str | os.PathLike, what: str = "--out") -> None:
    """Refuse, before any work, an output directory that cannot be created or written.

    ``what`` names the option in the message. A missing directory is fine if it can be made.
    """
    path = Path(path)
    if path.exists():
        if not path.is_dir():
            raise ConfigError(f"{what} {path} is a file, not a directory; give a directory path")
        if not os.access(path, os.W_OK | os.X_OK):
            raise ConfigError(f"{what} {path}: cannot write in it (permission denied); choose a writable location")
        return
    check_writable_location(path, what)


def check_output_file(path: str | os.PathLike, what: str) -> None:
    """Refuse, before any work, an output file path that is a directory or cannot be written."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{what} {path} is a directory; give a file path, e.g. {path / 'summary.json'}")
    if path.exists() and not os.access(path, os.W_OK):
        raise ConfigError(f"{what} {path}: cannot write it (permission denied); choose a writable location")
    check_writable_location(path, what)


def write_atomically(out_dir: str | os.PathLike, files: dict[str, bytes]) -> Path:
    """Write every file under a temporary name beside its target, then move each into place.

    Nothing is replaced unless every file was written; a crash leaves either the old file or
    the new one, never a partial file.
    """
    out = Path(out_dir)
    check_output_dir(out)
    out.mkdir(parents=True, exist_ok=True)
    with ExitStack() as staged:  # on leaving, each complete file is renamed into place
        for name, data in files.items():
            staged.enter_context(atomic_file(out / name)).write(data)
    return out


def write_evaluation_report(
    out_dir: str | os.PathLike,
    inputs: Any,
    specs: dict[str, str | None],
    center: Sequence[int] | None = None,
    n_errors: int = 10,
    min_error_voxels: int = 100,
    erl_dust_threshold: int | None = None,
    progress: bool = False,
    render_3d: int = 0,
) -> dict[str, Any]:
    """Evaluate ``inputs`` (an :class:`~neuroflood.evaluate.inputs.EvaluationInputs`) and write
    metrics.json, report.html, report.md and PNGs into ``out_dir``. Returns the metrics.json
    content.

    With ``erl_dust_threshold``, also the expected run length along ground-truth skeletons of
    objects of at least that many voxels (needs kimimaro; see :mod:`.skeletons`). With
    ``render_3d`` > 0, a 3-D picture of that many largest segments, the worst merge and the
    worst split (:mod:`.views3d`), listed under ``views_3d`` in metrics.json.
    """
    from .figures import error_gallery_figure, overlay_figure, size_histogram_figure, to_png
    from .inputs import voxel_size_of
    from .metrics import contingency_table, segmentation_metrics, worst_errors

    table = contingency_table(inputs.seg, inputs.gt, progress=progress)
    metrics = segmentation_metrics(table)
    errors = worst_errors(table, inputs.seg, inputs.gt, n=n_errors, min_voxels=min_error_voxels, progress=progress)
    offset = np.asarray(inputs.offset)
    gallery = error_gallery_figure(inputs.image, inputs.gt, inputs.seg, table, errors, offset=inputs.offset)
    for e in errors["merges"] + errors["splits"]:  # report coordinates in the ground-truth volume
        e["coordinate_zyx"] = [int(v) for v in np.asarray(e["coordinate_zyx"]) + offset]
    shape = inputs.shape
    center = tuple(int(c) for c in (center if center is not None else np.asarray(shape) // 2))
    voxel_size = voxel_size_of(inputs.image, inputs.gt)
    erl = {}
    if erl_dust_threshold is not None:
        from .skeletons import expected_run_length, skeletonize_ground_truth

        skeletons = skeletonize_ground_truth(inputs.gt, voxel_size, erl_dust_threshold, progress)
        erl = expected_run_length(skeletons, inputs.seg, voxel_size)

    result = {
        **metrics,
        **erl,
        "shape": list(shape),
        "offset_zyx": [int(v) for v in offset],
        "voxel_size_zyx": list(voxel_size),
        "inputs": specs,
        "conventions": {
            "gt_label_0": "unlabelled: excluded from every metric",
            "seg_label_0": "unsegmented: each labelled voxel its own one-voxel segment (SNEMI3D)",
            "vi_split": "H(seg|gt), bits",
            "vi_merge": "H(gt|seg), bits",
            "min_error_voxels": min_error_voxels,
            **({"erl_dust_threshold": erl_dust_threshold} if erl else {}),
        },
        "worst_merges": errors["merges"],
        "worst_splits": errors["splits"],
        "neuroflood_version": __version__,
    }

    report = Report("neuroflood evaluation")
    report.paragraph(
        f"Segmentation {specs.get('seg')} against ground truth {specs.get('gt')}"
        + (f" (image {specs['image']})" if specs.get("image") else "")
        + f"; region of shape {tuple(shape)} (z, y, x) starting at {tuple(int(v) for v in offset)}."
    )
    report.paragraph(CONVENTIONS)
    report.heading("Metrics")
    report.table(
        ["metric", "value", "meaning"],
        [[METRIC_DESCRIPTIONS[k][0], metrics[k], METRIC_DESCRIPTIONS[k][1]] for k in METRIC_DESCRIPTIONS],
    )
    if erl:
        report.heading("Expected run length along ground-truth skeletons")
        report.paragraph(
            f"TEASAR skeletons (kimimaro) of the {erl['n_skeletons']} objects of at least {erl_dust_threshold} voxels, "
            "in nm. An edge is correct when both nodes lie in one non-zero segment that holds no other "
            "skeleton's nodes; ERL = Σ(correct piece length)² / Σ(skeleton length)."
        )
        report.table(["metric", "value"], [[k, v] for k, v in erl.items()])
    report.heading("Ortho-slices")
    overlay = overlay_figure(
        inputs.image,
        inputs.gt,
        inputs.seg,
        table,
        center,
        voxel_size,
        title="Ortho-slices through z,y,x = " + ", ".join(str(int(c + o)) for c, o in zip(center, offset)),
        offset=inputs.offset,
    )
    report.figure(
        "ortho_slices",
        to_png(overlay),
        "Rows: the yx, zx and zy planes through the centre. Ground-truth objects have fixed "
        "colours; a segment matched one-to-one with an object shows that object's colour, other "
        "segments their own, so a merge appears as one colour over several objects and a split "
        "as a differently coloured piece. Error map: vermillion = voxel merged into a segment "
        "that belongs mostly to another object, blue = voxel split off its object's main "
        "segment, purple = both, yellow = unsegmented, grey = unlabelled (not scored).",
    )
    if gallery is not None:
        report.figure("worst_errors", to_png(gallery), "Close-ups of the largest merges and splits, centred on the listed coordinate (+).")
    report.figure("sizes", to_png(size_histogram_figure(table)), "Sizes of ground-truth objects and segments inside the labelled region.")
    if render_3d > 0:
        _add_views_3d(report, result, inputs, table, voxel_size, render_3d)
    _error_table(report, "Largest false merges", "segment", "objects", errors["merges"], min_error_voxels)
    _error_table(report, "Largest false splits", "object", "segments", errors["splits"], min_error_voxels)
    report.paragraph("Coordinates are z, y, x voxels in the ground-truth volume; look at them with `neuroflood view`.")
    report.write(out_dir, "evaluate", {"metrics.json": (json.dumps(result, indent=2) + "\n").encode()})
    return result


def _add_views_3d(report: Report, result: dict, inputs: Any, table: Any, voxel_size: Sequence[float], n_largest: int) -> None:
    from .figures import to_png
    from .views3d import views_3d

    figure, shown = views_3d(inputs, table, voxel_size, n_largest)
    if figure is None:
        return
    result["views_3d"] = shown
    report.heading("Neurons in 3-D")
    report.figure(
        "views_3d",
        to_png(figure),
        "Meshes (zmesh) of the largest segments; the segment that adds most to VI merge, cut into the "
        "ground-truth objects it covers; the object that adds most to VI split, cut into its segments "
        "(grey: unlabelled or unsegmented). Coordinates in the evaluated region; large objects are "
        "drawn from a subsampled copy.",
    )


def _coord(e: dict) -> str:
    return ", ".join(map(str, e.get("coordinate_zyx", [])))


def _fmt(v: Any) -> str:
    if v is None:
        return "—"
    if isinstance(v, (float, np.floating)):
        return f"{v:.4f}"
    if isinstance(v, (int, np.integer)) and not isinstance(v, bool):
        return f"{v:,}"
    return str(v)


def _now() -> str:
    return _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:1400px;margin:2em auto;padding:0 1em;color:#222;background:#fff}
h1{border-bottom:2px solid #0072B2;padding-bottom:.2em}
h2{margin-top:1.6em;color:#0072B2}
table{border-collapse:collapse;margin:.6em 0;font-size:14px}
th,td{border:1px solid #ccc;padding:4px 10px;text-align:left;vertical-align:top}
th{background:#eef4fa}
tr:nth-child(even) td{background:#fafafa}
figure{margin:1em 0}
figure img{max-width:100%;border:1px solid #ddd}
figcaption{font-size:13px;color:#555;max-width:1000px}
footer{margin-top:3em;font-size:12px;color:#888}
"""


def _error_table(report: Report, title: str, piece: str, parts: str, errors: list[dict], min_voxels: int) -> None:
    """A table of the largest false merges (a segment over objects) or splits (the reverse)."""
    key, size, count, members = (
        ("segment", "segment_voxels", "n_gt_objects", "gt_objects")
        if piece == "segment"
        else ("gt_object", "gt_voxels", "n_segments", "segments")
    )
    kind = "merge" if piece == "segment" else "split"
    owner = "object" if piece == "segment" else "segment"
    report.heading(title)
    report.paragraph(
        f"A{'n' if piece == 'object' else ''} {piece} overlapping at least two {parts} by {min_voxels} voxels or more; "
        f"size = its voxels outside its main {owner}."
    )
    rows = [
        [e[key], e[size], e["error_voxels"], e[count], ", ".join(f"{o['id']}: {o['voxels']:,}" for o in e[members][:4]), _coord(e)]
        for e in errors
    ]
    report.table(
        [piece, "voxels", f"{kind} voxels", parts, f"largest {parts} (id: voxels)", "z, y, x"], rows or [["none", "", "", "", "", ""]]
    )
