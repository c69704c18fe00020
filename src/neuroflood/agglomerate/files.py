"""The files of an agglomeration, written so that a killed run resumes exactly.

For an output ``ROOT.zarr/NAME``::

    ROOT.zarr/.NAME.agglomerate/request.json      what is computed (a rerun must match)
    ROOT.zarr/.NAME.agglomerate/segmentation.json the segments' ids and sizes (fingerprint)
    ROOT.zarr/.NAME.agglomerate/consensus.zarr    the consensus base segmentation (--consensus)
    ROOT.zarr/.NAME.agglomerate/points/I.npz      block I's decision-point candidates; I.done, I.failed
    ROOT.zarr/.NAME.agglomerate/pairs.npz         the decision points (one per pair)
    ROOT.zarr/.NAME.agglomerate/jobs/I.json       job I's pairs: scores and records; I.done, I.failed
    ROOT.zarr/.NAME.agglomerate/jobs/I.partial.json  the pairs job I finished so far
    ROOT.zarr/NAME.agglomeration/mapping.npz      segment_ids -> neuron_ids
    ROOT.zarr/NAME.agglomeration/pairs.npz        every pair's point, scores and decision
    ROOT.zarr/NAME.agglomeration/agglomeration.json  options, counts and the summary
    ROOT.zarr/NAME                                the agglomerated segmentation (zarr)

Every file is written atomically and a job's results before its ``.done`` marker, so what
exists after a kill is complete; a rerun redoes only what has no marker, and inside an
unfinished job only the pairs missing from its ``.partial.json``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic import atomic_savez, atomic_write_text, remove_tree
from ..errors import DataError
from ..infer.jobfiles import JobPaths


@dataclass
class AggPaths:
    """Where the files of the agglomeration writing ``ROOT.zarr/NAME`` are."""

    root: Path
    name: str

    @classmethod
    def from_spec(cls, spec: str) -> AggPaths:
        job = JobPaths.from_spec(spec)  # the same rule as blockwise outputs: DIR.zarr/NAME
        return cls(job.root, job.name)

    @property
    def spec(self) -> str:
        return f"{self.root}/{self.name}"

    @property
    def out(self) -> Path:
        return self.root / self.name

    @property
    def flat(self) -> str:
        return self.name.replace("/", "_")

    @property
    def work(self) -> Path:
        return self.root / f".{self.flat}.agglomerate"

    @property
    def result(self) -> Path:
        return self.root / f"{self.name}.agglomeration"

    @property
    def writing(self) -> str:
        return f"{self.root}/.{self.flat}.writing"

    @property
    def consensus_spec(self) -> str:
        return f"{self.work}/consensus.zarr/seg"

    @property
    def points(self) -> Path:
        return self.work / "points"

    @property
    def jobs(self) -> Path:
        return self.work / "jobs"

    @property
    def pairs(self) -> Path:
        return self.work / "pairs.npz"

    @property
    def mapping(self) -> Path:
        return self.result / "mapping.npz"

    @property
    def report(self) -> Path:
        return self.result / "agglomeration.json"


def _norm(d: Any) -> Any:
    return json.loads(json.dumps(d, sort_keys=True, default=str))


def finished(paths: AggPaths) -> dict[str, Any] | None:
    """The record of a finished agglomeration at ``paths`` (None: not finished)."""
    if not (paths.out.exists() and paths.report.exists() and paths.mapping.exists()):
        return None
    try:
        return json.loads(paths.report.read_text())
    except (OSError, ValueError):
        return None


def prepare_work(paths: AggPaths, request: dict[str, Any], fingerprint: dict[str, Any], overwrite: bool) -> None:
    """Create the work directory, or check that it holds this request on this segmentation.

    Refuses (DataError) an output that another request or another segmentation made, unless
    ``overwrite``, and an output this command did not make at all.
    """
    req_path = paths.work / "request.json"
    seg_path = paths.work / "segmentation.json"
    if req_path.exists():
        old_req = json.loads(req_path.read_text())
        old_seg = json.loads(seg_path.read_text()) if seg_path.exists() else None
        diff = sorted(k for k in set(old_req) | set(request) if old_req.get(k) != _norm(request).get(k))
        other_seg = old_seg is not None and old_seg.get("sha256") != fingerprint["sha256"]
        if not diff and not other_seg:
            return
        if not overwrite:
            if other_seg or "segmentation" in diff:
                what = "another segmentation (its path, segment ids or sizes differ)"
            else:
                what = f"another request (differs in: {', '.join(diff)})"
            raise DataError(f"{paths.spec} holds an agglomeration of {what}; choose another --out, or --overwrite to redo it")
        clear(paths)
    elif paths.out.exists() or paths.result.exists():
        raise DataError(f"{paths.spec} already exists and was not made by neuroflood agglomerate; choose another --out")
    for d in (paths.points, paths.jobs):
        d.mkdir(parents=True, exist_ok=True)
    atomic_write_text(seg_path, json.dumps(fingerprint, indent=2) + "\n")
    atomic_write_text(req_path, json.dumps(_norm(request), indent=2, sort_keys=True) + "\n")


def clear(paths: AggPaths) -> None:
    """Remove everything an earlier agglomeration wrote at ``paths``."""
    for p in (paths.out, paths.result, paths.work, Path(paths.writing)):
        if p.is_dir():
            remove_tree(p)
        elif p.exists():
            p.unlink()


def save_pairs_table(path: Path, records: list[dict[str, Any]], merged: np.ndarray) -> None:
    """Every pair's point, contact, scores, FOVs and decision, as columns of an npz."""

    def col(f: Any, dtype: Any) -> np.ndarray:
        return np.array([f(r) for r in records], dtype=dtype)

    arrays = {
        "id_a": col(lambda r: r["id_a"], np.uint64),
        "id_b": col(lambda r: r["id_b"], np.uint64),
        "point": col(lambda r: r["point"], np.int64).reshape(-1, 3),
        "dist": col(lambda r: r["dist"], np.float64),
        "contact": col(lambda r: r["contact"], np.int64),
        "status": col(lambda r: r["score"]["status"], str),
        "iou": col(lambda r: r["score"]["iou"], np.float64),
        "fov_evaluations": col(lambda r: r["fov_evaluations"], np.int64),
        "merged": np.asarray(merged, bool),
    }
    for side in ("from_a", "from_b"):
        for key in ("segment_a_consistency", "segment_b_consistency", "num_voxels", "deleted_voxels", "max_edt"):
            arrays[f"{side}_{key}"] = col(lambda r, s=side, k=key: r["score"][s][k], np.float64)
    atomic_savez(path, arrays)


def read_records(paths: AggPaths, n_jobs: int) -> list[dict[str, Any]]:
    """The pair records of every finished job, in pair order."""
    out: list[dict[str, Any]] = []
    for i in range(n_jobs):
        out += json.loads((paths.jobs / f"{i}.json").read_text())["pairs"]
    return sorted(out, key=lambda r: r["pair"])


def missing_jobs(paths: AggPaths, n_jobs: int) -> list[dict[str, Any]]:
    """A failure record for every job without a ``.done`` marker."""
    out = []
    for i in range(n_jobs):
        if not (paths.jobs / f"{i}.done").exists():
            p = paths.jobs / f"{i}.failed"
            out.append(json.loads(p.read_text()) if p.exists() else {"block": i, "box": "-", "error": "not run"})
    return out


__all__ = ["AggPaths", "clear", "finished", "missing_jobs", "prepare_work", "read_records", "save_pairs_table"]
