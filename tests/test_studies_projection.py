"""The scaling model's arithmetic (neuroflood.studies.projection)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from neuroflood.errors import ConfigError
from neuroflood.studies.projection import Interconnect, cv_for_efficiency, expected_max, interconnect, normal_max_factor, project


def test_no_jitter_and_no_communication_scale_perfectly():
    net = Interconnect("ideal", 0.0, 1e12)
    points = project(np.full(100, 0.25), 4, [1, 2, 64, 4096], net, message_bytes=0.0, trials=50)
    for p in points:
        assert p.efficiency == pytest.approx(1.0)
        assert p.fovs_per_s == pytest.approx(p.workers * 4 / 0.25)
        assert p.straggler_s == pytest.approx(0.0) and p.allreduce_s == 0.0


@pytest.mark.parametrize("n", [2, 16, 256])
def test_known_jitter_gives_the_known_expected_maximum(n):
    """Uniform(0, 1) work: E[max of n] = n / (n + 1), within 1 %."""
    samples = np.random.default_rng(1).uniform(0, 1, 200_000)
    assert expected_max(samples, n, trials=4000) == pytest.approx(n / (n + 1), rel=0.01)


def test_normal_maximum_matches_the_tabulated_value():
    # E[max of 1024 standard normals] = 3.2414 (order-statistics tables)
    assert normal_max_factor(1024, trials=4000) == pytest.approx(3.2414, rel=0.01)


def test_alpha_beta_times():
    net = Interconnect("x", 1e-6, 1e9)
    m = 1e6
    assert net.allreduce_s(1, m) == 0.0
    assert net.allreduce_s(4, m, "ring") == pytest.approx(2 * 3 * 1e-6 + 2 * 3 / 4 * m / 1e9)
    assert net.allreduce_s(1024, m, "tree") == pytest.approx(2 * 10 * 1e-6 + 2 * 1023 / 1024 * m / 1e9)
    assert net.allreduce_s(1024, m) == min(net.allreduce_s(1024, m, "ring"), net.allreduce_s(1024, m, "tree"))
    with pytest.raises(ConfigError, match="not ring, tree or best"):
        net.allreduce_s(4, m, "butterfly")


def test_efficiency_splits_into_stragglers_and_communication():
    samples = np.random.default_rng(2).normal(1.0, 0.1, 100_000).clip(0)
    net = interconnect("aries")
    (p,) = project(samples, 1, [1024], net, message_bytes=2.55e6, trials=2000)
    mean = samples.mean()
    assert p.step_s == pytest.approx(mean + p.straggler_s + p.allreduce_s)
    assert p.efficiency == pytest.approx(mean / p.step_s)
    assert p.straggler_s == pytest.approx(0.1 * 3.2414, rel=0.03)  # cv 10 % -> ~1.32x the mean


def test_cv_for_a_target_efficiency_inverts_the_model():
    cv = cv_for_efficiency(0.85, 1024, mean_s=1.0, comm_s=0.01)
    z = normal_max_factor(1024)
    assert 1.0 / (1.0 + cv * z + 0.01) == pytest.approx(0.85, rel=1e-6)
    assert cv_for_efficiency(0.85, 1024, mean_s=1.0, comm_s=1.0) == 0.0  # communication alone is too slow


def test_presets_and_overrides():
    net = interconnect("ib-hdr", latency_us=2.5, bandwidth_gbps=12.5)
    assert net.latency_s == pytest.approx(2.5e-6) and net.bandwidth_bps == pytest.approx(12.5e9)
    with pytest.raises(ConfigError, match="unknown interconnect"):
        interconnect("carrier-pigeon")
    with pytest.raises(ConfigError, match="bandwidth"):
        interconnect("aries", bandwidth_gbps=0)
    with pytest.raises(ConfigError, match="latency"):
        interconnect("aries", latency_us=math.nan)
