"""Seed policies: where the Canvas tries to start new objects, in order.

google/ffn ``ffn/inference/seed.py`` (ffn-algorithms.md §3.5). The interface (what a policy
reads of a canvas, how it is resolved from its name and placed in a blockwise job) is in
:mod:`.base`; the policies are in :mod:`.peaks`, :mod:`.explicit` and :mod:`.policies`.
"""

from .base import ImageView, SeedCanvas, SeedPolicy, SeedPolicyFactory, exclusion_mask
from .explicit import PolicyInvertOrigins, explicit_seeds
from .peaks import (
    PEAKS_CONTEXT,
    SUBVOLUME_NOISE_VOXELS,
    PolicyFillEmptySpace,
    PolicyPeaks,
    PolicyPeaks2d,
    distance_peaks,
    edges,
    find_peaks,
    position_noise,
    sorted_rows,
    subvolume_noise,
)
from .policies import (
    SEED_POLICIES,
    GridPolicy,
    PolicyDenseSeeds,
    PolicyGrid2d,
    PolicyGrid3d,
    PolicyImagePeaks2DDisk,
    PolicyImagePeaks3D2D,
    PolicyMax,
    PolicyMaxPeaks,
    ReverseCoords,
    SequentialPolicies,
    check_seed_policy,
    make_seed_policy,
    resolve_seed_policy,
)

__all__ = [
    "PEAKS_CONTEXT",
    "SEED_POLICIES",
    "SUBVOLUME_NOISE_VOXELS",
    "GridPolicy",
    "ImageView",
    "PolicyDenseSeeds",
    "PolicyFillEmptySpace",
    "PolicyGrid2d",
    "PolicyGrid3d",
    "PolicyImagePeaks2DDisk",
    "PolicyImagePeaks3D2D",
    "PolicyInvertOrigins",
    "PolicyMax",
    "PolicyMaxPeaks",
    "PolicyPeaks",
    "PolicyPeaks2d",
    "ReverseCoords",
    "SeedCanvas",
    "SeedPolicy",
    "SeedPolicyFactory",
    "SequentialPolicies",
    "check_seed_policy",
    "distance_peaks",
    "edges",
    "exclusion_mask",
    "explicit_seeds",
    "find_peaks",
    "make_seed_policy",
    "position_noise",
    "resolve_seed_policy",
    "sorted_rows",
    "subvolume_noise",
]
