"""Connecting the driver to Ray: start a local instance or join a cluster, never hang.

``address`` is one of

- ``local``: start a Ray instance on this machine sized to it (no dashboard). Ray's files go
  to ``$UQC_RAY_TMPDIR`` when set (tests use a short temporary folder: Ray's socket paths
  must stay under ~100 characters), else Ray's default (``/tmp/ray``);
- ``auto``: join the cluster started on this machine by ``ray start`` (or ``$RAY_ADDRESS``);
- ``ray://host:port``: join through Ray Client; ``host:port``: join a cluster's GCS directly.

A remote address is probed with a plain TCP connection first, bounded by ``timeout``
seconds, so an unreachable cluster is a one-line :class:`UQError` in seconds instead of
Ray's long retry loop. Token authentication (Ray ≥ 2.5x) is left as Ray configures it: a
joined cluster needs its token (``RAY_AUTH_TOKEN`` or ``~/.ray/auth_token``). A local instance
gets what Ray ≥ 2.59 gives it by default, token authentication (the token is ``~/.ray/auth_token``,
made once), but :func:`name_local_auth_mode` says so in ``RAY_AUTH_MODE`` so that Ray does not warn
about its default on every run; ``uqc run`` calls it before anything imports ``ray`` (Ray reads the
variable at import).
"""

from __future__ import annotations

import importlib.metadata
import ipaddress
import logging
import os
import socket
import sys
import warnings
from dataclasses import dataclass
from urllib.parse import urlsplit

from uqcampaign.kernels.errors import UQError
from uqcampaign.pipeline.config import is_url

__all__ = ["Connection", "connect", "name_local_auth_mode", "disconnect", "parse_address", "probe", "check_store_reachable", "SharedStoreWarning", "TMPDIR_ENV"]

TMPDIR_ENV = "UQC_RAY_TMPDIR"
AUTH_MODE_ENV = "RAY_AUTH_MODE"
# Ray puts unix sockets at <temp_dir>/session_<date>_<pid>/sockets/plasma_store (~60 characters
# after temp_dir); a socket path is limited to 107 bytes on Linux.
_MAX_TMPDIR_CHARS = 45


class SharedStoreWarning(UserWarning):
    """A local store path used with a cluster that has nodes on other hosts."""


@dataclass
class Connection:
    """How the driver is attached to Ray: ``owned`` when it started/joined Ray and must shut it down."""

    address: str
    owned: bool
    local: bool


def parse_address(address: str) -> tuple[str, int]:
    """``(host, port)`` of ``ray://host:port`` or ``host:port``; UQError when malformed."""
    text = address if "://" in address else f"tcp://{address}"
    try:
        parts = urlsplit(text)
        host, port = parts.hostname, parts.port
    except ValueError:
        host, port = None, None
    if not host or port is None:
        raise UQError(f"cluster address {address!r} is not host:port; use local, auto, ray://host:10001 or host:6379")
    return host, port


def probe(address: str, timeout: float) -> None:
    """Open (and close) a TCP connection to the address; UQError naming it when that fails in ``timeout`` s."""
    host, port = parse_address(address)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except OSError as exc:
        reason = "timed out" if isinstance(exc, TimeoutError) else (exc.strerror or type(exc).__name__)
        raise UQError(
            f"cannot reach the Ray cluster at {address} ({reason} within {timeout:g} s); "
            "start it with `ray start --head`, check the address, or use --address local"
        ) from None


def _temp_dir() -> str | None:
    folder = os.environ.get(TMPDIR_ENV)
    if folder and len(folder) > _MAX_TMPDIR_CHARS:
        raise UQError(f"{TMPDIR_ENV}={folder} is {len(folder)} characters; Ray's socket paths need at most {_MAX_TMPDIR_CHARS}: use a shorter folder")
    return folder or None


def name_local_auth_mode() -> None:
    """Set ``RAY_AUTH_MODE=token`` for a local instance unless the user chose a mode.

    Ray ≥ 2.59 turns token authentication on for a new local instance and warns that it did
    unless the variable names a mode. Ray reads it once, when the process imports ``ray``: set
    later, this process would keep authentication off while the raylet it starts turns it on, and
    they could not talk. So nothing is set once ``ray`` is imported (Ray then warns as before).
    """
    if AUTH_MODE_ENV not in os.environ and "ray" not in sys.modules and _ray_version() >= (2, 59):
        os.environ[AUTH_MODE_ENV] = "token"


def _ray_version() -> tuple[int, int]:
    """(major, minor) of the installed Ray, read without importing it; (0, 0) when unknown."""
    try:
        major, minor = importlib.metadata.version("ray").split(".")[:2]
        return int(major), int(minor)
    except (importlib.metadata.PackageNotFoundError, ValueError):
        return (0, 0)


def connect(address: str, *, timeout: float = 5.0) -> Connection:
    """Attach this process to Ray at ``address`` (see the module docstring).

    When Ray is already initialised in this process (a test fixture, a notebook), that
    connection is reused and left open (``owned=False``).
    """
    import ray

    if ray.is_initialized():
        return Connection(address=address, owned=False, local=address == "local")
    quiet = {"logging_level": logging.WARNING, "log_to_driver": False}
    if address == "local":
        ray.init(address="local", include_dashboard=False, _temp_dir=_temp_dir(), **quiet)
        return Connection(address="local", owned=True, local=True)
    if address == "auto":
        try:
            ray.init(address="auto", **quiet)
        except (ConnectionError, RuntimeError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise UQError(f"no Ray cluster to join at address auto ({first}); start one with `ray start --head` or use --address local") from None
        return Connection(address="auto", owned=True, local=False)
    probe(address, timeout)
    try:
        ray.init(address=address, **quiet)
    except (ConnectionError, TimeoutError) as exc:
        raise UQError(f"cannot join the Ray cluster at {address}: {str(exc).strip().splitlines()[0]}; check the address and the cluster's auth token") from None
    return Connection(address=address, owned=True, local=False)


def disconnect(connection: Connection) -> None:
    """Shut Ray down in this process when :func:`connect` attached it."""
    import ray

    if connection.owned and ray.is_initialized():
        ray.shutdown()


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_store_reachable(store: str, connection: Connection) -> str | None:
    """Warn (:class:`SharedStoreWarning`) when a local store path meets nodes on other hosts.

    Returns the warning text, or None. It is a warning, not an error: a local path on a
    shared filesystem (NFS, Lustre) is fine and cannot be told apart from here. A worker that
    cannot open the store stops the campaign with a :class:`UQError` naming its node.
    """
    import ray

    if is_url(store) and not store.startswith("file://"):
        return None
    if connection.address.startswith("ray://"):
        host, _ = parse_address(connection.address)
        remote = [] if _is_loopback(host) else [host]
    else:
        here = ray.util.get_node_ip_address()
        remote = sorted({node["NodeManagerAddress"] for node in ray.nodes() if node.get("Alive") and node["NodeManagerAddress"] != here})
    if not remote:
        return None
    text = (
        f"store {store} is a local path but the Ray cluster has nodes on other hosts ({', '.join(remote)}); "
        "unless it is on a filesystem every node mounts, use an fsspec URL (s3://bucket/run.zarr)"
    )
    warnings.warn(text, SharedStoreWarning, stacklevel=3)
    return text
