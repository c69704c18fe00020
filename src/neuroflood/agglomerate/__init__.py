"""Agglomeration: merge the segments of an FFN segmentation that the FFN says belong together.

``agglomerate(model, image_spec, seg_spec, out_spec)`` finds a decision point for every pair
of touching segments, resegments each pair there with the FFN from inside both segments,
merges the pairs whose fills agree (google/ffn's resegmentation, ffn-algorithms.md §4.4–4.6)
and writes the agglomerated segmentation and the mapping segment → neuron. The names are
imported lazily, so that ``neuroflood --help`` does not pay for importing torch.
"""

from __future__ import annotations

from .._lazy import lazy_getattr

_API = {
    "agglomerate": ".pipeline",
    "AgglomerationOptions": ".options",
    "find_decision_points": ".decision_points",
    "DecisionPoints": ".decision_points",
    "expand_segments": ".decision_points",
    "resegment_pair": ".resegment",
    "MergeRule": ".scoring",
    "PairScore": ".scoring",
    "score_pair": ".scoring",
    "build_mapping": ".merge",
    "fill_holes": ".merge",
    "AgglomerationFailures": ".job",
}
__all__ = [*_API]

__getattr__ = lazy_getattr(__name__, _API)
