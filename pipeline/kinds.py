"""What ``uqc kinds`` prints: every sampler, operator and prior kind with its keys, from one source.

The source is the code itself. Kinds come from the registries (``SAMPLER_KINDS``,
``OPERATOR_KINDS``, ``PRIOR_KINDS``); the keys a kind accepts from what its builder checks
(a sampler config's dataclass fields, an operator class's ``KEYS``, ``PRIOR_KEYS``); types and
defaults from the dataclass fields (samplers) or from the operator built on an empty spec (its
``describe()``); the summary, the meaning of each key and the reference from the docstring of
the sampler config dataclass, the operator class or the prior loader, written as::

    One-line summary of the kind.

    Reference: Author et al. 2022, Journal 15(2), Algorithm 2.

    Keys:
        name: meaning of the key,
            continued on indented lines.
        other: ...

``Keys: none`` (or no ``Keys:`` section) documents a kind without keys. A key whose entry is
missing, or an entry naming a key the kind does not accept, is a defect that
``tests/pipeline/test_kinds.py`` finds for every registered kind.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from uqcampaign.kernels.errors import UQError

__all__ = ["GROUPS", "KeyDoc", "KindDoc", "ParsedDoc", "parse_docstring", "kinds_of", "kind_doc", "documented_keys", "find_kind", "format_value"]

GROUPS: tuple[str, ...] = ("sampler", "operator", "prior")

# An operator is probed on this image to read the defaults it fills in (large enough for every default).
_PROBE_IMAGE = (1, 32, 32)

_ENTRY = re.compile(r"^(?P<indent>\s*)(?P<name>[A-Za-z_][\w-]*):(?:\s+(?P<text>.*))?$")


@dataclass(frozen=True)
class ParsedDoc:
    """A docstring cut into its ``summary`` (first paragraph), ``reference`` and ``keys`` (name → meaning)."""

    summary: str
    reference: str
    keys: dict[str, str]


@dataclass(frozen=True)
class KeyDoc:
    """One key of a kind: ``type`` and ``default`` as YAML text ("" when the code does not say)."""

    name: str
    type: str
    default: str
    meaning: str


@dataclass(frozen=True)
class KindDoc:
    """Everything ``uqc kinds GROUP NAME`` prints about one kind."""

    group: str
    kind: str
    summary: str
    reference: str
    keys: tuple[KeyDoc, ...]


_ROLE = re.compile(r":\w+:`~?([^`]*)`")


def _join(lines: list[str]) -> str:
    """Lines joined into one, whitespace collapsed, reST markup (``literal``, :role:`name`) dropped for the terminal."""
    text = " ".join(" ".join(line.split()) for line in lines if line.strip())
    return _ROLE.sub(r"\1", text).replace("``", "")


def parse_docstring(doc: str | None) -> ParsedDoc:
    """Split a docstring written to the convention above; missing parts are empty."""
    lines = inspect.cleandoc(doc or "").splitlines()
    summary: list[str] = []
    for line in lines:
        if not line.strip():
            break
        summary.append(line)
    reference: list[str] = []
    keys: dict[str, list[str]] = {}
    i = 0
    while i < len(lines):
        line = lines[i]
        stripped = line.strip()
        if stripped.startswith("Reference:") and not reference:
            reference.append(stripped.removeprefix("Reference:"))
            base = len(line) - len(line.lstrip())
            i += 1
            while i < len(lines) and lines[i].strip() and len(lines[i]) - len(lines[i].lstrip()) > base:
                reference.append(lines[i])
                i += 1
            continue
        if stripped.startswith("Keys:"):
            header = len(line) - len(line.lstrip())
            i += 1
            entry_indent: int | None = None
            current: str | None = None
            while i < len(lines):
                text = lines[i]
                indent = len(text) - len(text.lstrip())
                if not text.strip():
                    # a blank line ends the section unless an indented line follows
                    if i + 1 < len(lines) and lines[i + 1].strip() and len(lines[i + 1]) - len(lines[i + 1].lstrip()) > header:
                        i += 1
                        continue
                    break
                if indent <= header:
                    break
                match = _ENTRY.match(text)
                if match and (entry_indent is None or indent == entry_indent):
                    entry_indent = indent
                    current = match["name"]
                    keys[current] = [match["text"] or ""]
                elif current is not None:
                    keys[current].append(text)
                i += 1
            continue
        i += 1
    return ParsedDoc(_join(summary), _join(reference), {name: _join(text) for name, text in keys.items()})


def format_value(value: Any) -> str:
    """A default as the user writes it in YAML: ``null``, ``true``, ``auto``, ``[-1.0, 2.0]``, ``0.000384468``."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return format(value, ".6g")
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(format_value(v) for v in value) + "]"
    return str(value)


# -- the three groups ------------------------------------------------------------------------


def _sampler_kinds() -> tuple[str, ...]:
    from uqcampaign.kernels.samplers.registry import SAMPLER_KINDS

    return SAMPLER_KINDS


def _operator_kinds() -> tuple[str, ...]:
    from uqcampaign.kernels.operators import OPERATOR_KINDS

    return OPERATOR_KINDS


def _prior_kinds() -> tuple[str, ...]:
    from uqcampaign.kernels.priors.registry import PRIOR_KINDS

    return PRIOR_KINDS


def _sampler_doc(kind: str) -> tuple[str | None, list[tuple[str, str, str]]]:
    """(docstring, [(key, type, default)]) of a sampler kind's config dataclass."""
    from uqcampaign.kernels.samplers.registry import SAMPLER_CONFIGS

    config = SAMPLER_CONFIGS[kind]
    keys = []
    for field in dataclasses.fields(config):
        if field.default is not dataclasses.MISSING:
            default = format_value(field.default)
        elif field.default_factory is not dataclasses.MISSING:
            default = format_value(field.default_factory())
        else:
            default = "required"
        keys.append((field.name, _yaml_type(str(field.type)), default))
    return config.__doc__, keys


def _yaml_type(annotation: str) -> str:
    """A field's annotation in the words of YAML: ``tuple[float, float] | None`` → ``[float, float] or null``."""
    return annotation.replace("tuple[", "[").replace("None", "null").replace(" | ", " or ")


def _operator_doc(kind: str) -> tuple[str | None, list[tuple[str, str, str]]]:
    """(docstring, [(key, type, default)]) of an operator kind: defaults read from the operator built on an empty spec."""
    from uqcampaign.kernels.operators import OPERATOR_CLASSES, build_operator
    from uqcampaign.kernels.operators.spec import FILE_KEYS

    cls = OPERATOR_CLASSES[kind]
    try:
        defaults = {k: v for k, v in build_operator({"kind": kind}, _PROBE_IMAGE).describe().items() if k != "kind"}
        required: set[str] = set()
    except UQError as exc:  # a key without a default (e.g. the matrix file) is named by the refusal
        defaults, required = {}, {key for key in cls.KEYS if f"'{key}'" in str(exc)}
    keys = []
    for key in cls.KEYS:
        if key in defaults:
            keys.append((key, type(defaults[key]).__name__, format_value(defaults[key])))
        else:
            keys.append((key, "path" if key in FILE_KEYS else "", "required" if key in required else ""))
    return cls.__doc__, keys


def _prior_doc(kind: str) -> tuple[str | None, list[tuple[str, str, str]]]:
    """(docstring, [(key, "", "")]) of a prior kind: its loader's docstring and ``PRIOR_KEYS``."""
    from uqcampaign.kernels.priors.registry import PRIOR_KEYS, prior_loader

    return prior_loader(kind).__doc__, [(key, "", "") for key in PRIOR_KEYS[kind]]


_GROUP_KINDS: dict[str, Callable[[], tuple[str, ...]]] = {"sampler": _sampler_kinds, "operator": _operator_kinds, "prior": _prior_kinds}
_GROUP_DOCS: dict[str, Callable[[str], tuple[str | None, list[tuple[str, str, str]]]]] = {
    "sampler": _sampler_doc,
    "operator": _operator_doc,
    "prior": _prior_doc,
}


def kinds_of(group: str) -> tuple[str, ...]:
    """The registered kinds of ``group`` (``sampler``, ``operator`` or ``prior``)."""
    if group not in _GROUP_KINDS:
        raise UQError(f"unknown group {group!r}; choose one of {', '.join(GROUPS)}")
    return _GROUP_KINDS[group]()


def kind_doc(group: str, kind: str) -> KindDoc:
    """The documentation of one kind; UQError when the group or the kind is unknown."""
    kinds = kinds_of(group)
    if kind not in kinds:
        raise UQError(f"unknown {group} kind {kind!r}; choose one of {', '.join(kinds)}")
    doc, keys = _GROUP_DOCS[group](kind)
    parsed = parse_docstring(doc)
    return KindDoc(
        group=group,
        kind=kind,
        summary=parsed.summary,
        reference=parsed.reference,
        keys=tuple(KeyDoc(name, type_, default, parsed.keys.get(name, "")) for name, type_, default in keys),
    )


def documented_keys(group: str, kind: str) -> set[str]:
    """The keys the docstring of ``kind`` documents (to compare with those it accepts)."""
    doc, _ = _GROUP_DOCS[group](kind)
    return set(parse_docstring(doc).keys)


def find_kind(name: str) -> tuple[str, str]:
    """``(group, kind)`` of a kind named without its group (``uqc kinds ula``); UQError when unknown or ambiguous."""
    found = [(group, name) for group in GROUPS if name in kinds_of(group)]
    if len(found) == 1:
        return found[0]
    if found:
        raise UQError(f"{name!r} is a kind of {' and '.join(g for g, _ in found)}; say which: `uqc kinds {found[0][0]} {name}`")
    every = ", ".join(f"{group}s: {', '.join(kinds_of(group))}" for group in GROUPS)
    raise UQError(f"unknown kind or group {name!r}; give sampler, operator or prior, or a kind ({every})")
