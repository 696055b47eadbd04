"""The campaign file (DESIGN §3): pydantic models, YAML loading with line numbers, config hash.

``load_campaign(path)`` parses the YAML with ``yaml.safe_load``, validates it (unknown keys
are errors everywhere) and reports every problem as one :class:`UQError` line
``campaign.yaml:7: unknown key 'sampler.stepp'``: the key path is mapped back to its line by
walking the node tree of ``yaml.compose``. The operator, prior and sampler specs are checked
there too, cheaply (the prior's kind and keys only: nothing is loaded), so a misspelt key of
theirs also fails with its line.

Paths in the file (``store``, ``data.y``, ``data.truth``, ``prior.file``/``path``,
``operator.file``/``mask``) are relative to the YAML file's folder, :attr:`Campaign.root`.
The model keeps them as written (so the config hash does not depend on where the folder
lives); :meth:`Campaign.resolve` turns one into an absolute path and the kernels builders
receive ``root``.

Remainders: ``chunks.chains`` need not divide ``chains`` (the last chain block of each
measurement is smaller), and ``chunks.draws`` need not divide ``draws`` (the last draw chunk
is partial); a Zarr edge chunk holds them.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator

from uqcampaign.kernels.errors import UQError
from uqcampaign.pipeline.address import parse_address

__all__ = [
    "Campaign",
    "DataSpec",
    "SimulateSpec",
    "NoiseSpec",
    "ChunkSpec",
    "ClusterSpec",
    "ReduceSpec",
    "load_campaign",
    "campaign_from_dict",
    "is_url",
]

# Keys that change the draws: the config hash covers these and nothing else.
HASHED_KEYS = ("seed", "data", "operator", "noise", "prior", "sampler", "chains", "draws", "chunks")


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
    """``data.simulate``: draw ``count`` truths from the prior and simulate ``y = A x + σ ε``."""

    count: int = Field(ge=1)


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


def _component(value: Any) -> dict[str, Any]:
    """An operator/prior/sampler spec: a mapping with a string ``kind`` (its keys are checked by kernels)."""
    if not isinstance(value, dict):
        raise ValueError(f"expected a mapping with a 'kind', got {type(value).__name__}")
    if not isinstance(value.get("kind"), str):
        raise ValueError("missing 'kind' (a string)")
    return value


class Campaign(_Model):
    """A validated campaign (DESIGN §3). ``root`` is the folder paths are relative to."""

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

    _root: Path = PrivateAttr(default_factory=Path.cwd)

    @field_validator("operator", "prior", "sampler", mode="before")
    @classmethod
    def _components(cls, value: Any) -> dict[str, Any]:
        return _component(value)

    @model_validator(mode="before")
    @classmethod
    def _default_chunks(cls, raw: Any) -> Any:
        """No ``chunks``: 16 chains x 50 draws per chunk, clipped to the campaign."""
        if isinstance(raw, dict) and raw.get("chunks") is None:
            chains, draws = raw.get("chains"), raw.get("draws")
            if isinstance(chains, int) and isinstance(draws, int) and chains >= 1 and draws >= 1:
                raw = {**raw, "chunks": {"chains": min(16, chains), "draws": min(50, draws)}}
        return raw

    @model_validator(mode="after")
    def _chunks_fit(self) -> Campaign:
        if self.chunks.chains > self.chains:
            raise ValueError(f"@chunks.chains@ {self.chunks.chains} is larger than chains = {self.chains}; use at most {self.chains}")
        if self.chunks.draws > self.draws:
            raise ValueError(f"@chunks.draws@ {self.chunks.draws} is larger than draws = {self.draws}; use at most {self.draws}")
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

    def hashed_config(self) -> dict[str, Any]:
        """The part of the config that changes the draws (see :data:`HASHED_KEYS`)."""
        return self.model_dump(mode="json", include=set(HASHED_KEYS))

    def config_hash(self) -> str:
        """sha256 of the canonical JSON of :meth:`hashed_config` (not name/store/cluster/reduce)."""
        text = json.dumps(self.hashed_config(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()

    def to_json(self) -> str:
        """The whole validated config as JSON (kept in the store's root attrs)."""
        return self.model_dump_json()


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


def _duplicate_key(node: yaml.Node | None, prefix: str = "") -> tuple[str, int, int] | None:
    """``(key path, first line, second line)`` of the first key given twice in one mapping, else None.

    ``yaml.safe_load`` silently keeps the last value of a repeated key; the campaign refuses it.
    """
    if isinstance(node, yaml.MappingNode):
        seen: dict[str, int] = {}
        for key, value in node.value:
            name, line = f"{prefix}{key.value}", key.start_mark.line + 1
            if key.value in seen:
                return name, seen[key.value], line
            seen[key.value] = line
            found = _duplicate_key(value, f"{name}.")
            if found:
                return found
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            found = _duplicate_key(item, f"{prefix}{index}.")
            if found:
                return found
    return None


def _where(path: Path | None, node: yaml.Node | None, loc: tuple[Any, ...]) -> str:
    name = path.name if path is not None else "campaign"
    line = _key_line(node, loc)
    return f"{path if path is not None else name}:{line}" if line else str(path if path is not None else name)


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
    """Validate a parsed campaign mapping; errors become one-line :class:`UQError`.

    ``path`` and ``node`` (the ``yaml.compose`` tree) only serve the ``file:line:`` prefix.
    """
    if not isinstance(raw, dict):
        raise UQError(f"{path or 'campaign'}: expected a YAML mapping of campaign keys, got {type(raw).__name__}")
    try:
        campaign = Campaign.model_validate(raw)
    except ValidationError as exc:
        # Report one error (a misspelt key first: it usually explains a "missing" one too).
        errors = sorted(exc.errors(), key=lambda err: err["type"] != "extra_forbidden")
        loc, message = _format_error(errors[0])
        more = f" (and {len(errors) - 1} more error{'s' if len(errors) > 2 else ''})" if len(errors) > 1 else ""
        raise UQError(f"{_where(path, node, loc)}: {message}{more}") from None
    campaign.with_root(root if root is not None else Path.cwd())
    _check_specs(campaign, path, node)
    return campaign


def _check_specs(campaign: Campaign, path: Path | None, node: yaml.Node | None) -> None:
    """Check the operator, prior and sampler specs (cheaply) so a bad kind, key or value fails with its line."""
    for section, check in _SPEC_CHECKS.items():
        spec = getattr(campaign, section)
        try:
            check(dict(spec))
        except ImportError:  # kernels not installed yet: the runner builds the component later and reports there
            continue
        except UQError as exc:
            raise UQError(f"{_where(path, node, _spec_loc(section, spec, str(exc)))}: {exc}") from None


# The operator check builds on a probe image with file keys pointing at a path that does not exist
# (no file is read): errors that depend on the real image shape or on a file are SpecFitError, left
# to the run, which knows both; every other error (kind, keys, values) is reported here with its line.
_PROBE_IMAGE = (1, 8, 8)
_PROBE_FILE = "/nonexistent/uqc-probe.npy"


def _check_operator(spec: dict[str, Any]) -> None:
    """Build the operator on a probe image: a bad kind, key or value fails here; the rest is left to the runner."""
    from uqcampaign.kernels.errors import SpecFitError
    from uqcampaign.kernels.operators import build_operator

    probe = {key: _PROBE_FILE if key in ("mask", "file") else value for key, value in spec.items()}
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
    impossible values, prefixed by ``file:line`` where the key is found.
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
        raise UQError(f"{path}: the file is empty; write the campaign keys of DESIGN §3 (name, store, data, ...)")
    duplicate = _duplicate_key(node)
    if duplicate:
        key, first, second = duplicate
        raise UQError(f"{path}:{second}: key '{key}' is given twice (lines {first} and {second}); keep one")
    return campaign_from_dict(raw, path.resolve().parent, path=path, node=node)
