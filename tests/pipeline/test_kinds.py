"""`uqc kinds`: every registered kind documents every key it accepts, from the code's own docstrings."""

from __future__ import annotations

import dataclasses

import pytest
from typer.testing import CliRunner

from uqcampaign.kernels.operators import OPERATOR_CLASSES
from uqcampaign.kernels.priors.registry import PRIOR_KEYS
from uqcampaign.kernels.samplers import registry as sampler_registry
from uqcampaign.pipeline.cli import app
from uqcampaign.pipeline.kinds import GROUPS, documented_keys, kind_doc, kinds_of, parse_docstring

runner = CliRunner()


def accepted_keys(group: str, kind: str) -> set[str]:
    """The keys the builders accept, read from what they check (not from kinds.py)."""
    if group == "sampler":
        return {f.name for f in dataclasses.fields(sampler_registry.SAMPLER_CONFIGS[kind])}
    if group == "operator":
        return set(OPERATOR_CLASSES[kind].KEYS)
    return set(PRIOR_KEYS[kind])


EVERY_KIND = [(group, kind) for group in GROUPS for kind in kinds_of(group)]


@pytest.mark.parametrize(("group", "kind"), EVERY_KIND, ids=[f"{g}-{k}" for g, k in EVERY_KIND])
def test_every_kind_documents_every_key_it_accepts(group: str, kind: str) -> None:
    documented, accepted = documented_keys(group, kind), accepted_keys(group, kind)
    assert documented == accepted, f"{group} {kind}: undocumented {sorted(accepted - documented)}, documented but not accepted {sorted(documented - accepted)}"
    doc = kind_doc(group, kind)
    assert doc.summary and doc.reference, f"{group} {kind}: its docstring needs a summary line and a 'Reference:' line"
    assert all(key.meaning for key in doc.keys)


def test_the_registries_are_the_source_of_the_kinds() -> None:
    from uqcampaign.kernels.operators import OPERATOR_KINDS
    from uqcampaign.kernels.priors.registry import PRIOR_KINDS

    assert kinds_of("sampler") == sampler_registry.SAMPLER_KINDS
    assert kinds_of("operator") == OPERATOR_KINDS and kinds_of("prior") == PRIOR_KINDS


def test_a_new_kind_is_listed_and_its_missing_key_documentation_found(monkeypatch) -> None:
    """A kind registered later is discovered, and the check above flags a key its docstring forgets."""

    @dataclasses.dataclass(frozen=True)
    class NewConfig:
        """A sampler added later.

        Reference: Someone 2030.

        Keys:
            stages: network calls per iteration.
        """

        stages: int = 5
        eta: float = 0.05

    monkeypatch.setattr(sampler_registry, "SAMPLER_KINDS", (*sampler_registry.SAMPLER_KINDS, "new"))
    monkeypatch.setattr(sampler_registry, "SAMPLER_CONFIGS", {**sampler_registry.SAMPLER_CONFIGS, "new": NewConfig})
    result = runner.invoke(app, ["kinds", "sampler"])
    assert result.exit_code == 0 and "new" in result.stdout and "A sampler added later." in result.stdout
    assert documented_keys("sampler", "new") != accepted_keys("sampler", "new")  # eta is not documented
    assert {k.name: k.default for k in kind_doc("sampler", "new").keys} == {"stages": "5", "eta": "0.05"}


def test_parse_docstring_convention() -> None:
    doc = '''Summary on
    two lines.

    Reference: Author 2022, Journal 15(2),
        Algorithm 2.

    Keys:
        step: "auto" or a number,
            continued here.
        box: [lo, hi] or null.

    Text after the section, with a colon: not a key.
    '''
    parsed = parse_docstring(doc)
    assert parsed.summary == "Summary on two lines."
    assert parsed.reference == "Author 2022, Journal 15(2), Algorithm 2."
    assert parsed.keys == {"step": '"auto" or a number, continued here.', "box": "[lo, hi] or null."}
    assert parse_docstring("Only a summary.\n\nKeys: none.").keys == {}


def test_kinds_lists_every_group() -> None:
    result = runner.invoke(app, ["kinds"])
    assert result.exit_code == 0, result.output
    for group, kind in EVERY_KIND:
        assert f"{group} kinds" in result.stdout and f"  {kind} " in result.stdout


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["kinds", "sampler", "ula"], ["Laumont", "burn_in", "500", "thin", "10", "box", "box_rule", "penalty", "init", "prior", "float or str", "auto"]),
        (["kinds", "ula"], ["sampler ula:", "epsilon"]),
        (["kinds", "operator", "blur"], ["sigma", "2", "size", "9", "int", "Reference:"]),
        (["kinds", "operator", "matrix"], ["file", "path", "required"]),
        (["kinds", "prior", "latent-consistency"], ["prompt", "guidance_scale", "Luo"]),
        (["kinds", "sampler", "exact"], ["spread", "float", "known-wrong control"]),
    ],
)
def test_one_kind_prints_its_keys(args: list[str], expected: list[str]) -> None:
    result = runner.invoke(app, args, env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    for text in expected:
        assert text in result.stdout, (text, result.stdout)


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["kinds", "samplers"], "unknown kind or group 'samplers'"),
        (["kinds", "sampler", "uls"], "unknown sampler kind 'uls'; choose one of exact, ula"),
        (["kinds", "sampelr", "ula"], "unknown group 'sampelr'"),
    ],
)
def test_unknown_group_or_kind_is_one_line(args: list[str], expected: str) -> None:
    result = runner.invoke(app, args)
    assert result.exit_code == 2 and result.stderr.count("\n") == 1 and result.stderr.startswith(f"error: {expected}"), result.output
