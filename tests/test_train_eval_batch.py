"""Held-out evaluation gives the same figures however many trajectories share a network call."""

from __future__ import annotations

import pytest

from neuroflood.config import ModelConfig
from neuroflood.studies.common import base_options, execute, prepare_synthetic

TINY = ModelConfig.parse_spec("depth=2,features=4,fov=9,9,9,deltas=2,2,2")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return prepare_synthetic(tmp_path_factory.mktemp("data"), TINY, size=40, seed=0)


def test_eval_batch_size_changes_speed_not_figures(tmp_path, data):
    evals = []
    for eb in (None, 3, 16):
        options = base_options(tmp_path / f"eb{eb}", TINY, data, batch_size=2, max_steps=4, eval_every_steps=2, eval_examples=20)
        evals.append(execute({**options, "eval_batch_size": eb})["eval"])
    first = evals[0]
    assert len(first) == 2 and first[-1]["fovs"] >= 20
    for other in evals[1:]:
        for a, b in zip(first, other):
            assert (a["tp"], a["tn"], a["fp"], a["fn"], a["fovs"]) == (b["tp"], b["tn"], b["fp"], b["fn"], b["fovs"])
            assert a["accuracy"] == b["accuracy"] and a["f1"] == b["f1"]
            assert b["loss"] == pytest.approx(a["loss"], rel=1e-5)  # the mean over FOVs, not over steps
