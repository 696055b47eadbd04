"""Growing campaigns: more draws, chains and measurements extend the store; the result equals,
draw for draw, one run at the final size; what would change drawn draws is refused by name."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr

from uqcampaign.kernels.errors import UQError
from uqcampaign.pipeline import store as store_module
from uqcampaign.pipeline.config import load_campaign
from uqcampaign.pipeline.data import load_or_simulate, simulate
from uqcampaign.pipeline.runner import prepare_store, run_campaign
from uqcampaign.pipeline.units import load_components

# A Markov-chain sampler (a grown unit recomputes its done chunks without writing them), draws in
# chunks of 3 so that 7 → 10 draws rewrites the partial last chunk, chains in whole blocks of 2.
ULA = {"kind": "ula", "burn_in": 3, "thin": 2}
FINAL = {"chains": 6, "draws": 10, "data": {"simulate": {"count": 3}}}


def _arrays(location: str) -> dict[str, np.ndarray]:
    group = zarr.open_group(location, mode="r", use_consolidated=False)
    names = ("samples", "draws_done", "y_obs", "x_true", "measurement", "chain", "draw", "units/block")
    return {name: np.asarray(group[name][...]) for name in names}


def _chunk_files(location: str) -> dict[Path, tuple[int, bytes]]:
    root = Path(location) / "samples" / "c"
    return {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in root.rglob("*") if p.is_file()}


def test_simulated_measurements_are_prefix_stable(write_campaign) -> None:
    """data.simulate: the first M truths and measurements do not depend on count (each has its own stream)."""
    three = load_campaign(write_campaign("three.yaml", data={"simulate": {"count": 3}}))
    two = load_campaign(write_campaign("two.yaml", data={"simulate": {"count": 2}}))
    prior, operator, _ = load_components(three)
    y3, x3 = load_or_simulate(three, prior, operator)
    y2, x2 = load_or_simulate(two, prior, operator)
    assert y2.tobytes() == y3[:2].tobytes() and x2.tobytes() == x3[:2].tobytes()
    assert not np.array_equal(x3[0], x3[1])  # distinct streams
    y_last, x_last = simulate(three, prior, operator, 2, 3)  # a grown campaign simulates only its new measurements
    assert y_last.tobytes() == y3[2:].tobytes() and x_last.tobytes() == x3[2:].tobytes()


def test_grown_campaign_equals_one_run_at_the_final_size(write_campaign) -> None:
    reference = load_campaign(write_campaign("ref.yaml", store="ref.zarr", sampler=ULA, chunks={"chains": 2, "draws": 3}, **FINAL))
    run_campaign(reference, progress=False)

    small = load_campaign(write_campaign(sampler=ULA, chains=4, draws=7, chunks={"chains": 2, "draws": 3}, data={"simulate": {"count": 2}}))
    run_campaign(small, progress=False)
    before = _chunk_files(small.store_location)

    more_draws = load_campaign(write_campaign(sampler=ULA, chains=4, draws=10, chunks={"chains": 2, "draws": 3}, data={"simulate": {"count": 2}}))
    result = run_campaign(more_draws, progress=False)
    assert "growing campaign 'tiny' (draws 7 -> 10)" in result.messages[0] and "56 chain-draws done are kept" in result.messages[0]
    assert result.units_run == 4 and result.draws_written == 2 * 4 * 3  # only draws 7..9 written
    after = _chunk_files(small.store_location)
    rewritten = {p for p in before if after[p] != before[p]}
    # done chunks (draws 0-5) are never written again; only the partial last chunk (draw 6 of 6..8) is
    assert rewritten and all(p.parts[-4] == "2" for p in rewritten), sorted(map(str, rewritten))

    grown = load_campaign(write_campaign(sampler=ULA, chunks={"chains": 2, "draws": 3}, **FINAL))
    result = run_campaign(grown, progress=False)
    assert "chains 4 -> 6, measurements 2 -> 3" in result.messages[0]
    assert result.units_run == 2 * 1 + 3 and result.draws_written == (2 * 2 + 6) * 10  # new blocks and the new measurement only

    got, want = _arrays(grown.store_location), _arrays(reference.store_location)
    for name, value in want.items():
        assert got[name].tobytes() == value.tobytes(), name
    group = zarr.open_group(grown.store_location, mode="r", use_consolidated=False)
    assert json.loads(group.attrs["sizes"]) == {"measurement": 3, "chain": 6, "draw": 10} and "growing" not in group.attrs
    assert json.loads(group.attrs["campaign"])["chains"] == 6 and group["units/seconds"].shape == (3, 3)
    assert group["units/block"][...].tolist() == [0, 1, 2] and group["obs_x"].shape == (8,)


def test_grown_draws_keep_done_values(write_campaign) -> None:
    """The partial last draw chunk is rewritten on growth: the draw it held keeps its bytes."""
    small = load_campaign(write_campaign(sampler=ULA, chains=2, draws=4, chunks={"chains": 2, "draws": 3}, data={"simulate": {"count": 1}}))
    run_campaign(small, progress=False)
    kept = np.asarray(zarr.open_group(small.store_location, mode="r")["samples"][...])
    run_campaign(load_campaign(write_campaign(sampler=ULA, chains=2, draws=6, chunks={"chains": 2, "draws": 3}, data={"simulate": {"count": 1}})), progress=False)
    now = np.asarray(zarr.open_group(small.store_location, mode="r", use_consolidated=False)["samples"][...])
    assert now[:, :, :4].tobytes() == kept.tobytes() and np.isfinite(now).all()


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"noise": {"sigma": 0.2}}, "noise.sigma 0.1 -> 0.2"),
        ({"sampler": {**ULA, "step": 1e-05}}, "sampler.step '(absent)' -> 1e-05"),
        ({"seed": 4}, "seed 3 -> 4"),
        ({"chunks": {"chains": 4, "draws": 3}}, "chunks.chains 2 -> 4"),
        ({"draws": 3}, "draws 3 < 4 in the store (a store never shrinks)"),
        ({"chains": 3}, "chains 3 < 4 in the store"),
    ],
)
def test_what_changes_drawn_draws_is_refused_by_name(write_campaign, change: dict, expected: str) -> None:
    base = {"sampler": ULA, "chains": 4, "draws": 4, "chunks": {"chains": 2, "draws": 3}, "data": {"simulate": {"count": 1}}}
    campaign = load_campaign(write_campaign(**base))
    run_campaign(campaign, progress=False)
    other = load_campaign(write_campaign("other.yaml", **{**base, **change}))
    with pytest.raises(UQError) as info:
        prepare_store(other)
    message = str(info.value)
    assert expected in message and "--force --delete-draws" in message and "16/16 chain-draws done" in message, message
    assert zarr.open_group(campaign.store_location, mode="r")["draws_done"][...].sum() == 16


def test_partial_chain_block_cannot_grow(write_campaign) -> None:
    """6 chains in blocks of 4: the last block holds 2, drawn as a batch of 2; it cannot gain chains."""
    run_campaign(load_campaign(write_campaign()), progress=False)  # chains 6, chunks.chains 4
    with pytest.raises(UQError) as info:
        prepare_store(load_campaign(write_campaign(chains=8)))
    message = str(info.value)
    assert "the last chain block holds 2 of 4 chains" in message and "keep chains: 6, or run chains: 8 into a new store path" in message


def test_measurement_files_must_extend_the_stored_ones(write_campaign, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    y = rng.uniform(0, 1, (3, 1, 8, 8)).astype(np.float32)
    np.save(tmp_path / "y2.npy", y[:2])
    np.save(tmp_path / "y3.npy", y)
    run_campaign(load_campaign(write_campaign(data={"y": "y2.npy"})), progress=False)
    grown = run_campaign(load_campaign(write_campaign(data={"y": "y3.npy"})), progress=False)  # another file, same first rows
    assert "measurements 2 -> 3" in grown.messages[0] and grown.units_run == 2
    stored = zarr.open_group(tmp_path / "store.zarr", mode="r", use_consolidated=False)["y_obs"][...]
    assert stored.tobytes() == y.tobytes()
    y[0, 0, 0, 0] += 1.0
    np.save(tmp_path / "y4.npy", np.concatenate([y, y[:1]]))
    with pytest.raises(UQError, match="data.y: its first 3 measurements differ from the 3 in the store"):
        prepare_store(load_campaign(write_campaign(data={"y": "y4.npy"})))


def test_interrupted_grow_is_finished_by_the_next_run(write_campaign, monkeypatch: pytest.MonkeyPatch) -> None:
    """grow_store records its target first: a grow killed after resizing is completed by rerunning."""
    options = {"sampler": ULA, "chunks": {"chains": 2, "draws": 3}}
    reference = load_campaign(write_campaign("ref.yaml", store="ref.zarr", **options, chains=4, draws=6, data={"simulate": {"count": 2}}))
    run_campaign(reference, progress=False)
    run_campaign(load_campaign(write_campaign(**options, chains=2, draws=6, data={"simulate": {"count": 1}})), progress=False)
    grown = load_campaign(write_campaign(**options, chains=4, draws=6, data={"simulate": {"count": 2}}))

    def crash(group) -> None:  # noqa: ANN001 - the arrays are resized and the rows written; then the process "dies"
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(store_module, "sync_coordinates", crash)
        with pytest.raises(KeyboardInterrupt):
            run_campaign(grown, progress=False)
    group = zarr.open_group(grown.store_location, mode="r", use_consolidated=False)
    assert json.loads(group.attrs["growing"]) == {"measurement": 2, "chain": 4, "draw": 6}
    assert json.loads(group.attrs["sizes"]) == {"measurement": 1, "chain": 2, "draw": 6} and group["samples"].shape[:3] == (2, 4, 6)
    result = run_campaign(grown, progress=False)
    assert "growing campaign" in result.messages[0]
    for name, value in _arrays(reference.store_location).items():
        assert _arrays(grown.store_location)[name].tobytes() == value.tobytes(), name


def test_grow_store_refuses_shrinking_and_missing_rows(write_campaign) -> None:
    campaign = load_campaign(write_campaign())
    group, _, _ = prepare_store(campaign)
    with pytest.raises(UQError, match="cannot grow draws from 7 to 5"):
        store_module.grow_store(group, draws=5)
    with pytest.raises(UQError, match="needs the 1 new rows of y_obs"):
        store_module.grow_store(group, measurements=3)
    with pytest.raises(UQError, match="give x_true for the 1 new ones"):
        store_module.grow_store(group, measurements=3, y_obs=torch.zeros(1, 1, 8, 8).numpy())
