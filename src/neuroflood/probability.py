"""Probabilities and logits: the one ``logit``/``expit`` pair of scalar conversions.

Configs give thresholds as probabilities; the network works in logits. These convert one
number (a threshold) with ``math``; array code uses ``scipy.special.expit``.
"""

from __future__ import annotations

import math


def logit(p: float) -> float:
    """``ln(p / (1 - p))``, the logit of a probability in (0, 1)."""
    return math.log(p / (1.0 - p))


def expit(x: float) -> float:
    """``1 / (1 + exp(-x))``, the probability of a logit (inverse of :func:`logit`)."""
    return 1.0 / (1.0 + math.exp(-x))


__all__ = ["expit", "logit"]
