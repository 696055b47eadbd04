"""Randomness: one ``torch.Generator`` per work unit, derived from the campaign seed.

Every (measurement, chain block) unit draws from its own stream, spawned with
``numpy.random.SeedSequence(seed).spawn``, so a unit recomputed on another worker
(or after a crash) gives bit-identical draws on the same hardware.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["unit_seed", "unit_generator", "simulation_generator", "replicate_generator", "reference_generator"]


def unit_seed(campaign_seed: int, measurement: int, block: int) -> int:
    """The 63-bit seed of work unit ``(measurement, block)``.

    ``SeedSequence(campaign_seed).spawn`` is applied twice: once over measurements,
    once over chain blocks of that measurement, so adding measurements or blocks
    never changes the streams of existing units.
    """
    root = np.random.SeedSequence(campaign_seed)
    per_measurement = np.random.SeedSequence(root.entropy, spawn_key=(0, measurement))
    per_unit = np.random.SeedSequence(per_measurement.entropy, spawn_key=(0, measurement, block))
    return int(per_unit.generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))


def unit_generator(campaign_seed: int, measurement: int, block: int, device: str | torch.device = "cpu") -> torch.Generator:
    """A fresh ``torch.Generator`` on ``device`` seeded for unit ``(measurement, block)``."""
    generator = torch.Generator(device=device)
    generator.manual_seed(unit_seed(campaign_seed, measurement, block))
    return generator


def _stream_generator(campaign_seed: int, stream: int, index: int, device: str | torch.device) -> torch.Generator:
    seq = np.random.SeedSequence(np.random.SeedSequence(campaign_seed).entropy, spawn_key=(stream, index))
    generator = torch.Generator(device=device)
    generator.manual_seed(int(seq.generate_state(1, dtype=np.uint64)[0] >> np.uint64(1)))
    return generator


def simulation_generator(campaign_seed: int, measurement: int, device: str | torch.device = "cpu") -> torch.Generator:
    """The generator that simulates the truth and the measurement of measurement ``measurement``.

    Stream ``(1, measurement)`` of ``SeedSequence(campaign_seed)``, apart from the units' streams
    ``(0, …)``: each simulated measurement has its own stream, so the first M truths and
    measurements are the same whatever the number simulated (a campaign can grow).
    """
    return _stream_generator(campaign_seed, 1, measurement, device)


def replicate_generator(campaign_seed: int, measurement: int, device: str | torch.device = "cpu") -> torch.Generator:
    """The noise of a replicated measurement (``data.simulate.replicates`` > 1) that is not the first of its truth.

    Stream ``(2, measurement)``: the truth of measurement ``m`` comes from ``simulation_generator(seed, m // R)``;
    the first replicate ``m = g·R`` takes its noise from that same generator (as with ``R = 1``), the others
    from this one.
    """
    return _stream_generator(campaign_seed, 2, measurement, device)


def reference_generator(campaign_seed: int, device: str | torch.device = "cpu") -> torch.Generator:
    """The generator of ``reduce``'s reference prior draws and plausibility noise: stream ``(3, 0)``."""
    return _stream_generator(campaign_seed, 3, 0, device)
