"""The campaign file (DESIGN §3): pydantic models, YAML loading with line numbers, config hash.

``load_campaign(path)`` parses the YAML with ``yaml.safe_load``, validates it (unknown keys
are errors everywhere) and reports every problem at once, one line each, sorted by line
(``campaign.yaml:7: unknown key 'sampler.stepp'``; one problem is a :class:`UQError`, several a
:class:`UQErrors`): the key path is mapped back to its line by walking the node tree of
``yaml.compose``. The operator, prior and sampler specs are checked
there too, cheaply (the prior's kind and keys only: nothing is loaded), so a misspelt key of
theirs also fails with its line. The sampler then checks the campaign's layout
(``campaign_notes(chains, chunks.chains, draws)``: a point estimate needs ``draws: 1``, latino-pro
whole-measurement units, an SMC unit at most its ``runs × particles`` draws): refusals are problems
like the others, warnings are issued as :class:`CampaignWarning` (``uqc`` prints them as
``warning: …``).

Paths in the file (``store``, ``data.y``, ``data.truth``, ``prior.file``/``path``,
``operator.file``/``mask``) are relative to the YAML file's folder, :attr:`Campaign.root`.
The model keeps them as written (so the config hash does not depend on where the folder
lives); :meth:`Campaign.resolve` turns one into an absolute path and the kernels builders
receive ``root``.

Remainders: ``chunks.chains`` need not divide ``chains`` (the last chain block of each
measurement is smaller), and ``chunks.draws`` need not divide ``draws`` (the last draw chunk
is partial); a Zarr edge chunk holds them. An ``until`` campaign's store grows to
``until.max_draws``: its ``chunks.draws`` may exceed ``draws`` (the first round) up to that, the
partial chunk being rewritten, its done draws unchanged, as the rounds grow.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import math
import re
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator

from uqcampaign.kernels.errors import UQError, UQErrors
from uqcampaign.pipeline.address import parse_address

__all__ = [
    "Campaign",
    "CampaignWarning",
    "DataSpec",
    "SimulateSpec",
    "NoiseSpec",
    "ChunkSpec",
    "ClusterSpec",
    "ReduceSpec",
    "UntilSpec",
    "load_campaign",
    "sampler_notes",
    "campaign_from_dict",
    "is_url",
    "DRAW_KEYS",
]

# Keys that determine every draw of a unit: the config hash covers these (and the data source);
# a store refuses a campaign that differs in one of them. ``chains``, ``draws`` and the number of
# measurements may grow (the store is extended); ``name``, ``store``, ``cluster``, ``reduce`` and
# ``storage_options`` change nothing that is stored; ``until`` decides how many draws each
# measurement gets, never their values (see :mod:`uqcampaign.pipeline.until`).
DRAW_KEYS = ("seed", "operator", "noise", "prior", "sampler", "chunks")


class CampaignWarning(UserWarning):
    """A campaign that runs but that its sampler advises against (``file:line: message``)."""


def is_url(location: str | Path) -> bool:
    """True for an fsspec URL such as ``s3://bucket/run.zarr`` (never resolved against a folder)."""
    return "://" in str(location)


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool(cls, value: Any) -> Any:
        """Refuse a boolean where a number or string goes: pydantic would read ``chains: yes`` as 1."""
        if isinstance(value, bool):
            raise ValueError(f"got {value!r}; write a number or a string (YAML reads yes/no/on/off/true/false as booleans)")
        return value


class SimulateSpec(_Model):
    """``data.simulate``: ``count`` measurements ``y = A x + σ ε`` simulated from truths drawn from the prior.

    ``replicates`` (default 1): consecutive groups of ``R`` measurements share one truth — measurement
    ``m`` measures truth ``m // R`` with its own noise (Thong et al. 2024's replicated experiments: fixed
    truths, many noisy ``y``; ``uqc calibrate`` uses it). Measurement ``g·R`` is measurement ``g`` of the
    same campaign with ``replicates: 1``.
    """

    count: int = Field(ge=1)
    replicates: int = Field(default=1, ge=1)


class DataSpec(_Model):
    """``data``: either measurement files (``y``, optional ``truth``) or ``simulate``."""

    y: str | None = None
    truth: str | None = None
    simulate: SimulateSpec | None = None

    @model_validator(mode="after")
    def _one_source(self) -> DataSpec:
        if (self.y is None) == (self.simulate is None):
            raise ValueError("give exactly one of 'y' (a .npy file) or 'simulate' ({count: M})")
        if self.truth is not None and self.simulate is not None:
            raise ValueError("'truth' goes with 'y'; 'simulate' keeps its own truth")
        return self


class NoiseSpec(_Model):
    """``noise``: Gaussian noise standard deviation ``sigma`` (> 0) of the likelihood."""

    sigma: float = Field(gt=0, allow_inf_nan=False)


class ChunkSpec(_Model):
    """``chunks``: one Zarr chunk = ``chains`` chains × ``draws`` draws (one unit's write)."""

    chains: int = Field(ge=1)
    draws: int = Field(ge=1)


class ClusterSpec(_Model):
    """``cluster``: where ``uqc run`` executes (used by the Ray driver, ignored in-process).

    ``address``: ``local``, ``auto``, ``in-process``, ``host:port`` or ``ray://host:port``
    (:mod:`uqcampaign.pipeline.address`, the grammar of ``uqc run --address`` too).
    """

    address: str = "local"
    gpus_per_worker: float = Field(default=0.0, ge=0)
    workers: Literal["auto"] | int = "auto"

    @field_validator("address")
    @classmethod
    def _address(cls, value: str) -> str:
        try:
            return parse_address(value).text
        except UQError as exc:
            raise ValueError(str(exc)) from None

    @field_validator("workers")
    @classmethod
    def _workers(cls, value: str | int) -> str | int:
        if isinstance(value, int) and value < 1:
            raise ValueError(f"got {value}; use auto or an integer >= 1")
        return value


class ReduceSpec(_Model):
    """``reduce``: credible level of the equal-tailed intervals, strictly inside (0, 1)."""

    level: float = Field(default=0.9, gt=0, lt=1)


class UntilSpec(_Model):
    """``until``: draw in rounds until every measurement has converged (DESIGN §3).

    Round ``r`` brings every measurement still running to ``min(draws · 2^r, max_draws)`` draws
    per chain (the campaign's ``draws`` is the first round), then checks it on all its stored
    draws with the diagnostics of ``uqc reduce``: it stops, converged, when every pixel meets
    the three targets, or, not converged, at ``max_draws`` (flagged in the store's ``until/``
    group and in ``uqc report``). Stopped measurements are not sampled further.
    See :mod:`uqcampaign.pipeline.until`.

    Reference: Vehtari, Gelman, Simpson, Carpenter & Bürkner 2021, Bayesian Analysis 16(2),
    "Rank-normalization, folding, and localization" (R̂ < 1.01 and ESS > 400).

    Keys:
        rhat: every pixel's rank-normalised split R̂ must be below this (> 1).
        ess_bulk: every pixel's bulk effective sample size, all chains together, must be at
            least this (> 0).
        ess_tail: every pixel's tail ESS (of the 5% and 95% quantiles, the ends of a 90%
            interval) must be at least this; null (default): the ess_bulk target; 0: not checked.
        max_draws: draws per chain at most (>= draws); a measurement not converged there stops.
    """

    rhat: float = Field(default=1.01, gt=1, allow_inf_nan=False)
    ess_bulk: float = Field(default=400.0, gt=0, allow_inf_nan=False)
    ess_tail: float | None = Field(default=None, ge=0, allow_inf_nan=False)
    max_draws: int = Field(ge=1)

    @property
    def tail_target(self) -> float:
        """The tail-ESS target in force: ``ess_tail``, else ``ess_bulk``."""
        return self.ess_bulk if self.ess_tail is None else self.ess_tail


def _component(value: Any) -> dict[str, Any]:
    """An operator/prior/sampler spec: a mapping with a string ``kind`` (its keys are checked by kernels)."""
    if not isinstance(value, dict):
        raise ValueError(f"expected a mapping with a 'kind', got {type(value).__name__}")
    if not isinstance(value.get("kind"), str):
        raise ValueError("missing 'kind' (a string)")
    return value


class Campaign(_Model):
    """A validated campaign (DESIGN §3). ``root`` is the folder paths are relative to.

    ``storage_options``: fsspec options of a store given as a URL, e.g. ``{endpoint_url:
    http://minio:9000, key: ..., secret: ...}`` for ``s3://``; without it the usual AWS
    environment variables apply. It is passed to the workers but never written to the store.
    """

    name: str = Field(min_length=1)
    store: str = Field(min_length=1)
    seed: int = Field(default=0, ge=0)
    data: DataSpec
    operator: dict[str, Any]
    noise: NoiseSpec
    prior: dict[str, Any]
    sampler: dict[str, Any]
    chains: int = Field(ge=1)
    draws: int = Field(ge=1)
    chunks: ChunkSpec
    cluster: ClusterSpec = Field(default_factory=ClusterSpec)
    reduce: ReduceSpec = Field(default_factory=ReduceSpec)
    until: UntilSpec | None = None
    storage_options: dict[str, Any] | None = None

    _root: Path = PrivateAttr(default_factory=Path.cwd)
    _warnings: list[str] = PrivateAttr(default_factory=list)

    @field_validator("operator", "prior", "sampler", mode="before")
    @classmethod
    def _components(cls, value: Any) -> dict[str, Any]:
        return _component(value)

    @model_validator(mode="before")
    @classmethod
    def _default_chunks(cls, raw: Any) -> Any:
        """No ``chunks``: 16 chains x 50 draws per chunk, clipped to the campaign (to
        ``until.max_draws`` for an ``until`` campaign, whose store grows to it)."""
        if isinstance(raw, dict) and raw.get("chunks") is None:
            chains, draws = raw.get("chains"), raw.get("draws")
            until = raw.get("until")
            top = until.get("max_draws") if isinstance(until, dict) else None
            if isinstance(draws, int) and isinstance(top, int) and not isinstance(top, bool) and top > draws:
                draws = top
            if isinstance(chains, int) and isinstance(draws, int) and chains >= 1 and draws >= 1:
                raw = {**raw, "chunks": {"chains": min(16, chains), "draws": min(50, draws)}}
        return raw

    @property
    def draws_limit(self) -> int:
        """The most draws per chain the store can hold: ``draws``, or ``until.max_draws`` when larger."""
        return self.draws if self.until is None else max(self.draws, self.until.max_draws)

    @model_validator(mode="after")
    def _chunks_fit(self) -> Campaign:
        if self.chunks.chains > self.chains:
            raise ValueError(f"@chunks.chains@ {self.chunks.chains} is larger than chains = {self.chains}; use at most {self.chains}")
        if self.chunks.draws > self.draws_limit:
            limit = "draws" if self.until is None else "until.max_draws"
            raise ValueError(f"@chunks.draws@ {self.chunks.draws} is larger than {limit} = {self.draws_limit}; use at most {self.draws_limit}")
        if self.until is not None and self.until.max_draws < self.draws:
            raise ValueError(
                f"@until.max_draws@ {self.until.max_draws} is smaller than draws = {self.draws} (the first round); "
                f"use at least {self.draws}"
            )
        return self

    # -- derived quantities -------------------------------------------------------------
    @property
    def root(self) -> Path:
        """Folder that relative paths of the file are resolved against."""
        return self._root

    def with_root(self, root: str | Path) -> Campaign:
        """Set :attr:`root` (in place) and return self."""
        self._root = Path(root).resolve()
        return self

    def with_draws(self, draws: int) -> Campaign:
        """A copy with ``draws`` draws per chain and the same root (one round of an ``until`` campaign)."""
        return self.model_copy(update={"draws": int(draws)}).with_root(self.root)

    def resolve(self, location: str | Path) -> str:
        """``location`` made absolute against :attr:`root` (URLs are returned unchanged)."""
        if is_url(location):
            return str(location)
        path = Path(location).expanduser()
        return str(path if path.is_absolute() else (self.root / path).resolve())

    @property
    def store_location(self) -> str:
        """Absolute store path or URL."""
        return self.resolve(self.store)

    @property
    def n_blocks(self) -> int:
        """Chain blocks per measurement = ceil(chains / chunks.chains)."""
        return math.ceil(self.chains / self.chunks.chains)

    def block_chains(self, block: int) -> slice:
        """Chains of block ``block`` (the last block may be smaller)."""
        start = block * self.chunks.chains
        return slice(start, min(start + self.chunks.chains, self.chains))

    def draw_chunks(self) -> list[slice]:
        """Draw slices of the Zarr chunks along ``draw`` (the last may be partial)."""
        step = self.chunks.draws
        return [slice(s, min(s + step, self.draws)) for s in range(0, self.draws, step)]

    @property
    def data_source(self) -> str:
        """``"simulate"`` or ``"files"``: where the measurements come from."""
        return "simulate" if self.data.simulate is not None else "files"

    @property
    def n_measurements_planned(self) -> int | None:
        """``data.simulate.count``; None for measurement files (their length is read from the file)."""
        return None if self.data.simulate is None else self.data.simulate.count

    @property
    def replicates(self) -> int:
        """``data.simulate.replicates``: measurements per simulated truth (1 for measurement files)."""
        return 1 if self.data.simulate is None else self.data.simulate.replicates

    def hashed_config(self) -> dict[str, Any]:
        """What determines the draws: :data:`DRAW_KEYS` and the data source (not the sizes); ``replicates``
        when it is not 1 (so the hashes of campaigns without it are unchanged)."""
        hashed = {**self.model_dump(mode="json", include=set(DRAW_KEYS)), "data_source": self.data_source}
        if self.replicates != 1:
            hashed["replicates"] = self.replicates
        return hashed

    def config_hash(self) -> str:
        """sha256 of the canonical JSON of :meth:`hashed_config`: equal for every size of one campaign."""
        text = json.dumps(self.hashed_config(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()

    def to_json(self) -> str:
        """The whole validated config as JSON, ``storage_options`` included (what Ray workers receive)."""
        return self.model_dump_json()

    def stored_json(self) -> str:
        """The config as the store keeps it (root attr ``campaign``): without ``storage_options``,
        which may hold credentials."""
        return self.model_dump_json(exclude={"storage_options"})


# -- loading ---------------------------------------------------------------------------------


def _key_line(node: yaml.Node | None, loc: tuple[Any, ...]) -> int | None:
    """1-based line of the deepest key of ``loc`` found in the composed YAML tree."""
    line = None
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                if key.value == str(part):
                    line, node = key.start_mark.line + 1, value
                    break
            else:
                return line
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            return line
    return line


def _duplicate_keys(node: yaml.Node | None, prefix: str = "") -> list[tuple[str, int, int]]:
    """``(key path, first line, repeated line)`` of every key given twice in one mapping.

    ``yaml.safe_load`` silently keeps the last value of a repeated key; the campaign refuses it.
    """
    found: list[tuple[str, int, int]] = []
    if isinstance(node, yaml.MappingNode):
        seen: dict[str, int] = {}
        for key, value in node.value:
            name, line = f"{prefix}{key.value}", key.start_mark.line + 1
            if key.value in seen:
                found.append((name, seen[key.value], line))
            else:
                seen[key.value] = line
            found += _duplicate_keys(value, f"{name}.")
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            found += _duplicate_keys(item, f"{prefix}{index}.")
    return found


def _where(path: Path | None, node: yaml.Node | None, loc: tuple[Any, ...]) -> str:
    name = path.name if path is not None else "campaign"
    line = _key_line(node, loc)
    return f"{path if path is not None else name}:{line}" if line else str(path if path is not None else name)


# One problem of a campaign file: (line, or None when the key is absent; the line of text shown).
Problem = tuple[int | None, str]


def _problem(path: Path | None, node: yaml.Node | None, loc: tuple[Any, ...], message: str) -> Problem:
    return _key_line(node, loc), f"{_where(path, node, loc)}: {message}"


def _raise_problems(problems: list[Problem]) -> None:
    """Nothing when ``problems`` is empty; one UQError for one; a UQErrors of all, sorted by line, for more."""
    if not problems:
        return
    lines = [text for _, text in sorted(problems, key=lambda p: (p[0] is None, p[0] or 0))]
    if len(lines) == 1:
        raise UQError(lines[0])
    raise UQErrors(lines)


def _format_error(err: dict[str, Any]) -> tuple[tuple[Any, ...], str]:
    """(loc, message) of one pydantic error, with union branches folded away."""
    loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and ("[" in p or p in ("int", "str", "literal"))))
    loc = tuple(p for p in loc if not (isinstance(p, str) and p.startswith("function-")))
    key = ".".join(str(p) for p in loc) or "campaign"
    kind = err["type"]
    if kind == "extra_forbidden":
        return loc, f"unknown key '{key}'"
    if kind == "missing":
        return loc, f"missing key '{key}'"
    msg = err["msg"].removeprefix("Value error, ")
    if msg.startswith("@"):  # a model-level check naming its own key: "@chunks.chains@ message"
        key, msg = msg[1:].split("@ ", 1)
        loc = tuple(key.split("."))
    if kind not in ("value_error", "assertion_error") and "input" in err and not isinstance(err["input"], (dict, list)):
        msg = f"{msg} (got {err['input']!r})"
    return loc, f"'{key}': {msg}"


def campaign_from_dict(raw: Any, root: str | Path | None = None, *, path: Path | None = None, node: yaml.Node | None = None) -> Campaign:
    """Validate a parsed campaign mapping; every problem is reported at once.

    One problem raises a one-line :class:`UQError`, several a :class:`UQErrors` with one
    ``file:line: …`` line each, sorted by line. ``path`` and ``node`` (the ``yaml.compose``
    tree) only serve the ``file:line:`` prefix.
    """
    campaign, problems = _validate(raw, path, node)
    _raise_problems(problems)
    assert campaign is not None
    return campaign.with_root(root if root is not None else Path.cwd())


def _validate(raw: Any, path: Path | None, node: yaml.Node | None) -> tuple[Campaign | None, list[Problem]]:
    """The campaign (None when invalid) and every problem found: the model's, then each component spec's."""
    if not isinstance(raw, dict):
        return None, [(None, f"{path or 'campaign'}: expected a YAML mapping of campaign keys, got {type(raw).__name__}")]
    problems: list[Problem] = []
    campaign = None
    try:
        campaign = Campaign.model_validate(raw)
    except ValidationError as exc:
        by_loc: dict[tuple[Any, ...], str] = {}
        unknown, missing = [], []
        for err in exc.errors():
            loc, message = _format_error(err)
            if loc in by_loc:  # the branches of a union (e.g. auto | integer): one line, both reasons
                message = by_loc[loc] + " or " + message.split(": ", 1)[-1]
            by_loc[loc] = message
            (unknown if err["type"] == "extra_forbidden" else missing if err["type"] == "missing" else []).append(loc)
        for loc in unknown:  # a misspelt key explains the missing one: one line says both
            near = [m for m in missing if m[:-1] == loc[:-1] and m in by_loc]
            match = difflib.get_close_matches(str(loc[-1]), [str(m[-1]) for m in near], n=1, cutoff=0.6) if loc else []
            if match:
                by_loc[loc] += f"; did you mean '{'.'.join(map(str, (*loc[:-1], match[0])))}' (missing)?"
                del by_loc[next(m for m in near if str(m[-1]) == match[0])]
        problems += [_problem(path, node, loc, message) for loc, message in by_loc.items()]
    spec_problems = _spec_problems(raw, path, node)
    problems += spec_problems
    if campaign is not None and not spec_problems:
        notes = _sampler_notes(campaign)
        problems += [_problem(path, node, tuple(note.key.split(".")), note.message) for note in notes if note.error]
        campaign._warnings = [_problem(path, node, tuple(note.key.split(".")), note.message)[1] for note in notes if not note.error]
    return campaign, problems


def _sampler_notes(campaign: Campaign) -> list[Any]:
    """The sampler's ``campaign_notes`` on this campaign's chains, chunks and draws (``CampaignNote``s)."""
    try:
        from uqcampaign.kernels.samplers.registry import build_sampler

        sampler = build_sampler(dict(campaign.sampler))
    except (ImportError, UQError):  # reported by _spec_problems, or left to the runner
        return []
    return sampler_notes(campaign, sampler)


def sampler_notes(campaign: Campaign, sampler: Any) -> list[Any]:
    """``sampler``'s ``campaign_notes`` on this campaign's chains, chunks and most draws (``until.max_draws``
    for an ``until`` campaign), and the refusal of ``until`` by a sampler whose draws cannot grow
    (``DRAWS_EXTEND`` False: SMC)."""
    notes = list(sampler.campaign_notes(campaign.chains, campaign.chunks.chains, campaign.draws_limit))
    if campaign.until is not None and not sampler.DRAWS_EXTEND:
        from uqcampaign.kernels.samplers.facts import CampaignNote

        notes.append(CampaignNote(
            "until",
            f"sampler {sampler.kind!r} takes all of a unit's draws from one pool at its end, so the rounds of until: "
            f"cannot extend a measurement's draws (a longer run takes other draws): remove until: and give fixed draws "
            f"(e.g. draws: {campaign.until.max_draws}), or use a Markov-chain sampler (ula, skrock)",
        ))
    return notes


def _spec_problems(raw: dict[str, Any], path: Path | None, node: yaml.Node | None) -> list[Problem]:
    """Check the operator, prior and sampler specs (cheaply) so a bad kind, key or value fails with its line.

    A section that is not a mapping with a string ``kind`` is left to the model's own error.
    """
    problems: list[Problem] = []
    for section, check in _SPEC_CHECKS.items():
        spec = raw.get(section)
        if not (isinstance(spec, dict) and isinstance(spec.get("kind"), str)):
            continue
        try:
            check(dict(spec))
        except ImportError:  # kernels not installed yet: the runner builds the component later and reports there
            continue
        except UQError as exc:
            problems.append(_problem(path, node, _spec_loc(section, spec, str(exc)), str(exc)))
    return problems


# The operator check builds on a probe image with file keys pointing at a path that does not exist
# (no file is read): errors that depend on the real image shape or on a file are SpecFitError, left
# to the run, which knows both; every other error (kind, keys, values) is reported here with its line.
_PROBE_IMAGE = (1, 8, 8)
_PROBE_FILE = "/nonexistent/uqc-probe.npy"


def _check_operator(spec: dict[str, Any]) -> None:
    """Build the operator on a probe image: a bad kind, key or value fails here; the rest is left to the runner."""
    from uqcampaign.kernels.errors import SpecFitError
    from uqcampaign.kernels.operators import build_operator
    from uqcampaign.kernels.operators.spec import FILE_KEYS

    probe = {key: _PROBE_FILE if key in FILE_KEYS else value for key, value in spec.items()}
    try:
        build_operator(probe, _PROBE_IMAGE)
    except SpecFitError:
        pass


def _check_prior(spec: dict[str, Any]) -> None:
    """Check the prior's kind and keys only: loading it may read big files or a network."""
    from uqcampaign.kernels.priors.registry import check_prior_spec

    check_prior_spec(spec)


def _check_sampler(spec: dict[str, Any]) -> None:
    """Build the sampler (cheap, no prior): a bad kind, key or value fails here."""
    from uqcampaign.kernels.samplers.registry import build_sampler

    build_sampler(spec)


# Checked at load time, in file order, so a bad component spec fails with the line of its key.
_SPEC_CHECKS: dict[str, Callable[[dict[str, Any]], None]] = {"operator": _check_operator, "prior": _check_prior, "sampler": _check_sampler}


def _spec_loc(section: str, spec: dict[str, Any], message: str) -> tuple[str, ...]:
    """Key path of the ``section`` key that ``message`` names (``'key'``, ``key=`` or ``section.key``).

    Else the ``kind`` key when the message is about the kind, else the section itself.
    """
    for key in spec:
        name = re.escape(str(key))
        if re.search(rf"'{name}'|(?<![\w.]){name}=|\b{re.escape(section)}\.{name}\b", message):
            return (section, str(key))
    return (section, "kind") if "kind" in message else (section,)


def load_campaign(path: str | Path) -> Campaign:
    """Read and validate a campaign YAML file; relative paths resolve against its folder.

    Raises :class:`UQError` for a missing file, invalid YAML, unknown keys, wrong types and
    impossible values, prefixed by ``file:line`` where the key is found; the sampler's warnings
    about the layout are issued as :class:`CampaignWarning`.
    """
    path = Path(path)
    if not path.is_file():
        raise UQError(f"{path}: campaign file not found; give the path of a campaign .yaml file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise UQError(f"{path}: not a UTF-8 text file (byte {exc.start}); save the campaign as UTF-8 YAML") from None
    try:
        raw = yaml.safe_load(text)
        node = yaml.compose(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise UQError(f"{where}: invalid YAML: {problem}") from None
    if raw is None:
        # chunks is filled in by Campaign._default_chunks when absent
        required = ", ".join(name for name, field in Campaign.model_fields.items() if field.is_required() and name != "chunks")
        raise UQError(f"{path}: the file is empty; a campaign needs the keys {required} (`uqc kinds` lists the operator, prior and sampler kinds)")
    problems: list[Problem] = [
        (second, f"{path}:{second}: key '{key}' is given twice (lines {first} and {second}); keep one")
        for key, first, second in _duplicate_keys(node)
    ]
    campaign, more = _validate(raw, path, node)
    _raise_problems(problems + more)
    assert campaign is not None
    for text in campaign._warnings:
        warnings.warn(text, CampaignWarning, stacklevel=2)
    return campaign.with_root(path.resolve().parent)
