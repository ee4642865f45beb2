"""Greedy k-center (farthest-first traversal) for diversity selection, exact and at scale.

Greedy k-center (Gonzalez 1985) starts from one row and repeatedly adds the row farthest
(Euclidean) from everything chosen so far; its covering radius is within 2x of the
optimum (OPT). The plain form makes one pass over all N rows per pick: O(N k d).
Methods of :func:`select_k_center`:

* ``exact`` - **lazy exact greedy** (module ``lazy``): the same picks as the plain form
  (ties to the lowest row index; float32 rounding can flip a near-tie closer than ~1e-7),
  from lazy distance bounds and several exact picks per round. Bound: identical to the
  plain greedy, so 2 x OPT.
* ``fast`` - the same algorithm, but each refresh ranks the new centers in low precision
  and keeps the float32 distance to the nearest one as ranked; the pool and the reported
  radius stay float32 and exact. The precision (module ``products``): **bf16** on a CPU
  with native bfloat16, score error E <= 0.04 max|x|^2 (squared distance); **int8** with
  per-row scales elsewhere on x86 with AVX2, E = 2 r (2 M + r), r the largest rounding
  residual norm and M the largest row norm, measured on the input and reported as
  ``details["ranking_error_bound"]``. With either, the center kept for a row is nearest
  up to 2E, so each pick is farthest up to 2E and the covering radius is at most
  sqrt((2 OPT)^2 + 2E). Without either (no torch, no AVX2), ``fast`` is ``exact``.
* ``sharded`` - two-round composable coreset (Malkomes et al., NeurIPS 2015; module
  ``sharded``): the greedy on each of ``shards`` parts, then again over the union of
  their centers. Bound: **4 x OPT** for any split, hence at most 4x the exact greedy's
  radius (greedy >= OPT). ``per_shard="proportional"`` has no a-priori bound; every run
  reports a certified one, ``certified_ratio_to_opt``.
* ``auto`` - ``sharded`` when ``shards > 1``; else ``fast`` when N k >= 5e9 row x center
  pairs, else ``exact``.

Exact duplicate rows are collapsed first (the lowest index stands for its copies; copies
are picked only once every distinct row is, lowest index first), so ties behave as in
the plain form. On a GPU (``device="cuda"``, or ``auto`` when torch sees one) the greedy
runs device-resident instead (module ``device``: ``exact`` there has the same picks and
bound, ``fast`` means TF32 products with their own E). The CPU path never needs a GPU library. Measured times
and radius ratios: benchmarks/README.md, "k-center selection".

Modules, each importing only those before it (tests/core/test_kcenter.py checks it):
``rows`` (input checks, duplicates, ``resolve_k``, the result), ``products`` (float32
products and the low-precision rankings), ``lazy`` (the CPU greedy), ``device`` (the
device-resident greedy), ``greedy`` (one run: checks, CPU or device), ``sharded`` (the
coreset over parts), ``select`` (the entry point).
"""

from synth_empathy.core.kcenter.device import STORAGE_DTYPES
from synth_empathy.core.kcenter.greedy import greedy_k_center
from synth_empathy.core.kcenter.lazy import covering_radius
from synth_empathy.core.kcenter.products import RANKINGS
from synth_empathy.core.kcenter.rows import KCenterResult, resolve_k, with_copies
from synth_empathy.core.kcenter.select import METHODS, select_k_center
from synth_empathy.core.kcenter.sharded import PER_SHARD, map_shards_here, per_part, shard_greedy
from synth_empathy.errors import SelectionError

__all__ = [
    "METHODS",
    "PER_SHARD",
    "RANKINGS",
    "STORAGE_DTYPES",
    "KCenterResult",
    "SelectionError",
    "covering_radius",
    "greedy_k_center",
    "map_shards_here",
    "per_part",
    "resolve_k",
    "select_k_center",
    "shard_greedy",
    "with_copies",
]
