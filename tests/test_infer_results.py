"""Quantized probabilities of segmentation results."""

from __future__ import annotations

import numpy as np

from neuroflood.infer.results import dequantize_probability, quantize_probability


def test_quantize_probability_round_trip():
    p = np.array([0.0, 1.0, 0.5, np.nan, 0.999], np.float32)
    q = quantize_probability(p)
    assert q.tolist() == [1, 255, 128, 0, 254]
    back = dequantize_probability(q)  # the reference's (q - 0.5) / 255: within one bin
    assert np.isnan(back[3]) and np.all(np.abs(back[[0, 1, 2, 4]] - p[[0, 1, 2, 4]]) <= 2.0 / 254)
