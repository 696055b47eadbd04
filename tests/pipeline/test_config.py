"""Campaign YAML: validation errors name the key and the line; paths and hash behave."""

from __future__ import annotations

from pathlib import Path

import pytest

from uqcampaign.kernels.errors import UQError
from uqcampaign.pipeline.config import load_campaign

GOOD = """\
name: lines
store: out/store.zarr
seed: 1
data:
  simulate: {count: 2}
operator: {kind: inpaint, fraction: 0.5}
noise: {sigma: 0.05}
prior: {kind: gmm, file: ../priors/p.npz}
sampler:
  kind: ula
  burn_in: 10
chains: 8
draws: 20
chunks: {chains: 4, draws: 10}
reduce: {level: 0.9}
"""


def _load_text(tmp_path: Path, text: str) -> str:
    """The one-line UQError message of loading ``text``."""
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(UQError) as info:
        load_campaign(path)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_valid_campaign_resolves_paths_and_defaults(tmp_path: Path) -> None:
    (tmp_path / "c.yaml").write_text(GOOD)
    campaign = load_campaign(tmp_path / "c.yaml")
    assert campaign.store_location == str(tmp_path.resolve() / "out" / "store.zarr")
    assert campaign.resolve(campaign.prior["file"]) == str(tmp_path.resolve().parent / "priors" / "p.npz")
    assert campaign.resolve("s3://bucket/run.zarr") == "s3://bucket/run.zarr"
    assert campaign.cluster.address == "local" and campaign.cluster.workers == "auto"
    assert campaign.n_blocks == 2 and campaign.draw_chunks() == [slice(0, 10), slice(10, 20)]


def test_default_chunks_and_remainders(write_campaign) -> None:
    campaign = load_campaign(write_campaign(chunks=None, chains=40, draws=120))
    assert (campaign.chunks.chains, campaign.chunks.draws) == (16, 50)
    assert campaign.n_blocks == 3 and campaign.block_chains(2) == slice(32, 40)
    assert campaign.draw_chunks()[-1] == slice(100, 120)


def test_config_hash_covers_only_what_changes_draws(write_campaign) -> None:
    """The hash covers what determines each draw; the sizes a campaign may grow in are not part of it."""
    def hash_of(**overrides) -> str:
        return load_campaign(write_campaign("h.yaml", **overrides)).config_hash()

    base = hash_of()
    assert hash_of(name="other", store="elsewhere.zarr", reduce={"level": 0.5}, cluster={"address": "auto"}) == base
    assert hash_of(storage_options={"anon": True}) == base
    assert hash_of(draws=8, chains=8, data={"simulate": {"count": 5}}) == base  # a grown campaign
    assert hash_of(seed=4) != base
    assert hash_of(noise={"sigma": 0.2}) != base
    assert hash_of(sampler={"kind": "ula"}) != base
    assert hash_of(chunks={"chains": 2, "draws": 3}) != base
    assert hash_of(data={"y": "y.npy"}) != base  # another data source


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ("chains: 8", "chainz: 8", "c.yaml:12: unknown key 'chainz'"),
        ("noise: {sigma: 0.05}", "noise: {sigma: 0.05, sgima: 1}", "c.yaml:7: unknown key 'noise.sgima'"),
        ("  burn_in: 10", "  stepp: 10", "c.yaml:11: unknown key 'stepp' in the ula sampler spec"),
        ("chains: 8", "chains: many", "c.yaml:12: 'chains': Input should be a valid integer"),
        ("chains: 8", "chains: 0", "c.yaml:12: 'chains': Input should be greater than or equal to 1"),
        ("chunks: {chains: 4, draws: 10}", "chunks: {chains: 9, draws: 10}", "c.yaml:14: 'chunks.chains': 9 is larger than chains = 8"),
        ("chunks: {chains: 4, draws: 10}", "chunks: {chains: 4, draws: 30}", "c.yaml:14: 'chunks.draws': 30 is larger than draws = 20"),
        ("reduce: {level: 0.9}", "reduce: {level: 1.0}", "c.yaml:15: 'reduce.level': Input should be less than 1"),
        ("reduce: {level: 0.9}", "reduce: {level: 0}", "c.yaml:15: 'reduce.level': Input should be greater than 0"),
        ("noise: {sigma: 0.05}", "noise: {sigma: -1}", "c.yaml:7: 'noise.sigma': Input should be greater than 0"),
        ("  simulate: {count: 2}", "  simulate: {count: 2}\n  y: y.npy", "c.yaml:4: 'data': give exactly one of 'y'"),
        ("name: lines", "name: lines\ncluster: {address: nowhere}", "c.yaml:2: 'cluster.address': address 'nowhere' is not understood; use local, auto, in-process, HOST:PORT"),
        ("noise: {sigma: 0.05}", "", "c.yaml: missing key 'noise'"),
        ("prior: {kind: gmm, file: ../priors/p.npz}", "prior: {file: p.npz}", "c.yaml:8: 'prior': missing 'kind'"),
    ],
)
def test_errors_name_key_and_line(tmp_path: Path, old: str, new: str, expected: str) -> None:
    assert old in GOOD
    message = _load_text(tmp_path, GOOD.replace(old, new))
    assert expected in message, message


OPERATOR = "operator: {kind: inpaint, fraction: 0.5}"
PRIOR = "prior: {kind: gmm, file: ../priors/p.npz}"


@pytest.mark.parametrize(
    ("old", "new", "line", "expected"),
    [
        (OPERATOR, "operator: {kind: inpaint, fracton: 0.5}", 6, "unknown key 'fracton' in the inpaint operator spec; allowed keys: fraction, seed, mask"),
        (OPERATOR, "operator:\n  fraction: 0.5\n  kind: inpaint-x", 8, "unknown operator kind 'inpaint-x'; choose one of denoise"),
        (OPERATOR, "operator:\n  kind: inpaint\n  fraction: 1.5", 8, "operator inpaint: fraction=1.5 must be <= 1.0"),
        (OPERATOR, "operator: {kind: blur, sigma: 1.0, size: 4}", 6, "operator blur: size=4 must be odd"),
        (OPERATOR, "operator: {kind: matrix}", 6, "operator matrix: missing key 'file'"),
        (PRIOR, "prior: {kind: gmm, fiel: p.npz}", 8, "unknown key 'fiel' in the gmm prior spec; allowed keys: kind, file"),
        (PRIOR, "prior:\n  file: p.npz\n  kind: gmn", 10, "unknown prior kind 'gmn'; choose one of gaussian, gmm"),
        (PRIOR, "prior: {kind: latent-consistency, path: nowhere, promt: a digit}", 8, "unknown key 'promt' in the latent-consistency prior spec"),
    ],
)
def test_component_spec_errors_start_with_file_and_line(tmp_path: Path, old: str, new: str, line: int, expected: str) -> None:
    assert old in GOOD
    message = _load_text(tmp_path, GOOD.replace(old, new))
    assert message.startswith(f"{tmp_path / 'c.yaml'}:{line}: {expected}"), message


@pytest.mark.parametrize(
    ("old", "new"),
    [
        (OPERATOR, "operator: {kind: superres, factor: 3}"),  # may divide the real image size
        (OPERATOR, "operator: {kind: blur, sigma: 2.0, size: 31}"),  # may fit the real image
        (OPERATOR, "operator: {kind: inpaint, fraction: 0.001}"),  # may keep a pixel of a larger image
        (OPERATOR, "operator: {kind: inpaint, mask: masks/m.npy}"),  # files are read by the run
        (OPERATOR, "operator: {kind: matrix, file: A.npy}"),
        (PRIOR, "prior: {kind: latent-consistency, path: no/such/folder, prompt: a digit}"),  # no network is loaded
    ],
)
def test_load_time_checks_need_no_image_shape_and_read_no_file(tmp_path: Path, old: str, new: str) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(GOOD.replace(old, new))
    load_campaign(path)  # the run reports these, once it knows the image and reads the files


def test_invalid_yaml_reports_line(tmp_path: Path) -> None:
    message = _load_text(tmp_path, GOOD.replace("chains: 8", "chains: [8"))
    assert "c.yaml:" in message and "invalid YAML" in message


@pytest.mark.parametrize("text", ["", "- a\n- b\n"])
def test_empty_or_non_mapping_file(tmp_path: Path, text: str) -> None:
    assert "c.yaml" in _load_text(tmp_path, text)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(UQError, match="nowhere.yaml: campaign file not found"):
        load_campaign(tmp_path / "nowhere.yaml")


EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "examples").glob("*.yaml"))


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_every_example_campaign_is_valid_and_its_files_exist(path: Path) -> None:
    from uqcampaign.pipeline.units import count_measurements

    campaign = load_campaign(path)
    assert count_measurements(campaign) >= 1
    for spec in (campaign.prior, campaign.operator):
        for key in ("file", "path", "mask"):
            if spec.get(key):
                assert Path(campaign.resolve(spec[key])).exists(), f"{path.name}: {key} {spec[key]} missing"


def test_learned_demo_is_an_example() -> None:
    from uqcampaign.pipeline.demo import DEMO_YAML, LEARNED_DEMO_YAML

    assert DEMO_YAML in EXAMPLES and LEARNED_DEMO_YAML in EXAMPLES
