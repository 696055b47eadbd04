"""What a sampler tells a campaign beyond its draws: the facts it reports (:class:`UnitArray`) and its
layout rules (:class:`CampaignNote`). No torch here: the store and the campaign loader read these
declarations without loading a sampler's maths.
"""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["BLOCK", "UnitArray", "CampaignNote"]

BLOCK = "block"
"""``UnitArray.block_dim`` of a fact that is one value per unit: the store adds a ``block`` dimension."""


class UnitArray(NamedTuple):
    """A fact a sampler reports in ``Draw.info`` that the campaign store keeps for every work unit.

    ``name``: the ``info`` key, also the array's name in the store (``group/name``).
    ``group``: the store group it goes in (``""`` = the root, ``"units"``, ``"smc"``, …).
    ``dims``, ``shape``: dimension names and extents of one unit's value (``shape`` is the
    value's shape; along a ``chain`` block dimension the last block may hold fewer).
    ``dtype``: numpy dtype of the stored array. ``long_name`` (CF) and ``units`` its attributes.
    ``block_dim``: how the units of one measurement share the array:

    * a name in ``dims``: the chain blocks lie side by side along it (block ``b`` owns entries
      ``b·n … b·n + n − 1``, ``n = shape[dims.index(block_dim)]``; e.g. SMC's ``run``, or ``chain``);
    * :data:`BLOCK` (not in ``dims``): one value per unit; the store adds a ``block`` dimension;
    * None: one value per measurement: the unit is the whole measurement (the sampler sets
      ``INTERACTING_CHAINS``).

    ``per_draw``: the value comes on every draw as a scalar and the store keeps its mean over the
    unit's draws weighted by their network calls (``Draw.nfe``; equal weights when none makes
    one); otherwise it comes on the unit's last draw only. Store dims: ``(measurement, [block],
    *dims)``, with ``block_dim`` entries per unit.
    """

    name: str
    group: str
    dims: tuple[str, ...]
    shape: tuple[int, ...]
    dtype: str
    long_name: str
    block_dim: str | None = BLOCK
    per_draw: bool = False
    units: str | None = None

    @property
    def path(self) -> str:
        """Its path in the store: ``group/name`` (``name`` at the root)."""
        return f"{self.group}/{self.name}" if self.group else self.name


class CampaignNote(NamedTuple):
    """What a sampler says about a campaign's layout: ``key`` (the campaign key to change, e.g.
    ``"chunks.chains"``), a one-line ``message`` naming the value and the fix, and ``error``
    (refused) or not (a warning)."""

    key: str
    message: str
    error: bool = True
