"""The one address grammar of ``uqc run --address``, ``uqc reduce --address`` and ``cluster.address``.

=====================  ===============  ================================================
text                   :attr:`kind`     meaning
=====================  ===============  ================================================
``local``              ``local``        run: start a Ray instance on this machine; reduce: threads here
``in-process``         ``in-process``   run: no Ray at all; reduce: threads here
``auto``               ``auto``         join the cluster ``ray start`` started here (or ``$RAY_ADDRESS``)
``host:port``          ``ray``          join a Ray cluster through its head's GCS port (6379 by default)
``ray://host[:port]``  ``ray-client``   join a Ray cluster through Ray Client (port 10001 by default)
``tcp://host[:port]``  ``dask``         reduce only: a Dask distributed scheduler (8786 by default);
                                        ``tls://`` too
=====================  ===============  ================================================

:func:`parse_address` is the only parser: the YAML validator (``config.ClusterSpec``), the
reduction's scheduler choice (``reduce.py``) and the Ray connection (``cluster/connect.py``,
``pipeline/ray_join.py``) all call it, so a form one of them accepts the others accept too.
It imports nothing heavy (no Ray): the CLI parses before it decides what to import.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlsplit

from uqcampaign.kernels.errors import UQError

__all__ = ["Address", "parse_address", "KEYWORDS", "RAY_CLIENT_PORT", "DASK_PORT"]

Kind = Literal["local", "in-process", "auto", "ray", "ray-client", "dask"]
KEYWORDS: tuple[str, ...] = ("local", "in-process", "auto")
RAY_CLIENT_PORT = 10001  # Ray's default for ray://host
DASK_PORT = 8786  # Dask distributed's default for tcp://host
_SCHEMES = {"ray": ("ray-client", RAY_CLIENT_PORT), "tcp": ("dask", DASK_PORT), "tls": ("dask", DASK_PORT)}
_FORMS = "local, auto, in-process, HOST:PORT (a Ray head's GCS port, e.g. 10.0.0.1:6379), ray://HOST:10001 (Ray Client)"


@dataclass(frozen=True)
class Address:
    """A parsed address: ``text`` as given, its ``kind``, and ``host``/``port`` for the network kinds."""

    text: str
    kind: Kind
    host: str | None = None
    port: int | None = None

    @property
    def joins_ray(self) -> bool:
        """True when this address names a running Ray cluster to join (``auto``, ``host:port``, ``ray://``)."""
        return self.kind in ("auto", "ray", "ray-client")

    @property
    def here(self) -> bool:
        """True for the forms that need no cluster (``local``, ``in-process``)."""
        return self.kind in ("local", "in-process")

    @property
    def hostport(self) -> str:
        """``host:port`` (IPv6 hosts in brackets); only for the network kinds."""
        if self.host is None or self.port is None:
            raise ValueError(f"address {self.text!r} has no host and port")
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def for_ray(self) -> str:
        """The address string ``ray.init`` takes: ``ray://host:port``, ``host:port`` or ``auto``."""
        if self.kind == "ray-client":
            return f"ray://{self.hostport}"
        if self.kind == "ray":
            return self.hostport
        return self.kind


def _split(text: str, default_port: int | None) -> tuple[str, int]:
    """``(host, port)`` of ``scheme://host[:port]`` or ``host:port``; ValueError when malformed."""
    parts = urlsplit(text if "://" in text else f"//{text}")
    host, port = parts.hostname, parts.port  # .port raises ValueError out of 0..65535
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username is not None:
        raise ValueError("extra parts")
    if not host:
        raise ValueError("no host")
    if port is None:
        if default_port is None:
            raise ValueError("no port")
        port = default_port
    if port == 0:
        raise ValueError("port 0")
    return host, port


def parse_address(text: str, *, purpose: Literal["run", "reduce"] = "run") -> Address:
    """Parse ``text`` (see the module docstring); UQError naming the accepted forms when it is not one.

    ``purpose="run"`` (``uqc run``, ``cluster.address``) refuses a Dask ``tcp://`` scheduler: the
    campaign's workers are Ray actors. ``purpose="reduce"`` accepts every form.
    """
    if not isinstance(text, str):
        raise UQError(f"address {text!r} is not a string; use {_FORMS}")
    text = text.strip()
    forms = _FORMS + (", or tcp://HOST:8786 (a Dask scheduler)" if purpose == "reduce" else "")
    if text in KEYWORDS:
        return Address(text=text, kind=text)  # type: ignore[arg-type]
    scheme = text.split("://", 1)[0].lower() if "://" in text else None
    if scheme is not None and scheme not in _SCHEMES:
        raise UQError(f"address {text!r} has scheme {scheme}://, which is not understood; use {forms}")
    kind, default_port = _SCHEMES[scheme] if scheme else ("ray", None)
    try:
        host, port = _split(text, default_port)
    except ValueError:
        raise UQError(f"address {text!r} is not understood; use {forms}") from None
    if kind == "dask" and purpose == "run":
        raise UQError(
            f"address {text!r} is a Dask scheduler: `uqc run` needs Ray ({_FORMS}); Dask addresses are for `uqc reduce --address`"
        )
    return Address(text=text, kind=kind, host=host, port=port)  # type: ignore[arg-type]
