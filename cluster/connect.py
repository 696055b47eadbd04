"""Connecting the driver to Ray: start a local instance or join a cluster, never hang, stay quiet.

``address`` follows the one grammar of :mod:`uqcampaign.pipeline.address`:

- ``local``: start a Ray instance on this machine sized to it (no dashboard). Ray's files go
  to ``$UQC_RAY_TMPDIR`` when set (tests use a short temporary folder: Ray's socket paths
  must stay under ~100 characters), else Ray's default (``/tmp/ray``);
- ``auto``, ``host:port``, ``ray://host:port``: join a running cluster through
  :func:`uqcampaign.pipeline.ray_join.join` (``auto`` resolved, token auth set up, an
  unreachable cluster or an auth mismatch a one-line :class:`UQError` in seconds, Ray Client retried).

A local instance gets what Ray ≥ 2.59 gives it by default, token authentication (the token is
``~/.ray/auth_token``, made once, unless ``RAY_AUTH_TOKEN`` is set), but
:func:`name_local_auth_mode` says so in ``RAY_AUTH_MODE`` so that Ray does not warn about its
default on every run.

While connected, what Ray's GCS publishes to the driver (a lost node's ``Raylet is terminated``
with its ``[state-dump]`` log tail, "node marked dead") is kept out of the terminal
(:func:`~uqcampaign.pipeline.ray_join.quiet_ray_messages`): :attr:`Connection.ray_messages`
collects the first line of each, and the driver reports each lost worker in one line itself.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import ipaddress
import os
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

from uqcampaign.kernels.errors import UQError
from uqcampaign.pipeline.address import Address, parse_address
from uqcampaign.pipeline.config import is_url
from uqcampaign.pipeline.ray_join import QUIET_INIT, join, quiet_ray_messages, set_auth_mode

__all__ = ["Connection", "connect", "name_local_auth_mode", "disconnect", "check_store_reachable", "SharedStoreWarning", "TMPDIR_ENV"]

TMPDIR_ENV = "UQC_RAY_TMPDIR"
# Ray puts unix sockets at <temp_dir>/session_<date>_<pid>/sockets/plasma_store (~60 characters
# after temp_dir); a socket path is limited to 107 bytes on Linux.
_MAX_TMPDIR_CHARS = 45


class SharedStoreWarning(UserWarning):
    """A local store path used with a cluster that has nodes on other hosts."""


@dataclass
class Connection:
    """How the driver is attached to Ray.

    ``address``: as given; ``target``: the cluster joined (``auto`` resolved), None for ``local``;
    ``owned``: this call started/joined Ray and :func:`disconnect` shuts it down;
    ``ray_messages``: first line of each message Ray published to the driver while connected.
    """

    address: str
    owned: bool
    local: bool
    target: Address | None = None
    ray_messages: list[str] = field(default_factory=list)
    _quiet: contextlib.ExitStack = field(default_factory=contextlib.ExitStack, repr=False)

    def _keep(self, message: str) -> None:
        first = message.strip().splitlines()[0] if message.strip() else ""
        if first and first not in self.ray_messages:
            self.ray_messages.append(first)


def _temp_dir() -> str | None:
    folder = os.environ.get(TMPDIR_ENV)
    if folder and len(folder) > _MAX_TMPDIR_CHARS:
        raise UQError(f"{TMPDIR_ENV}={folder} is {len(folder)} characters; Ray's socket paths need at most {_MAX_TMPDIR_CHARS}: use a shorter folder")
    return folder or None


def name_local_auth_mode() -> None:
    """Set ``RAY_AUTH_MODE=token`` for a local instance unless the user chose a mode.

    Ray ≥ 2.59 turns token authentication on for a new local instance and warns that it did
    unless the variable names a mode. Ray reads the variable when this process imports ``ray``;
    :func:`~uqcampaign.pipeline.ray_join.set_auth_mode` reloads Ray's config when ``ray`` is
    already imported, so this may be called before or after the import, but before ``ray.init``.
    """
    if _ray_version() >= (2, 59):
        set_auth_mode("token")


def _ray_version() -> tuple[int, int]:
    """(major, minor) of the installed Ray, read without importing it; (0, 0) when unknown."""
    try:
        major, minor = importlib.metadata.version("ray").split(".")[:2]
        return int(major), int(minor)
    except (importlib.metadata.PackageNotFoundError, ValueError):
        return (0, 0)


def connect(address: str | Address, *, timeout: float = 5.0, say: Callable[[str], None] | None = None) -> Connection:
    """Attach this process to Ray at ``address`` (see the module docstring); ``say`` receives notes (e.g. retries).

    When Ray is already initialised in this process (a test fixture, a notebook), that
    connection is reused and left open (``owned=False``).
    """
    parsed = parse_address(address) if isinstance(address, str) else address
    if parsed.kind == "in-process":
        raise UQError("address in-process runs without Ray: call pipeline.runner.run_campaign")
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        connection = Connection(address=parsed.text, owned=False, local=parsed.kind == "local", target=None if parsed.here else parsed)
    elif parsed.kind == "local":
        name_local_auth_mode()
        import ray

        ray.init(address="local", include_dashboard=False, _temp_dir=_temp_dir(), **QUIET_INIT)
        connection = Connection(address="local", owned=True, local=True)
    else:
        target = join(parsed, timeout=timeout, say=say)  # sets the auth mode before it imports ray
        connection = Connection(address=parsed.text, owned=True, local=False, target=target)
    connection._quiet.enter_context(quiet_ray_messages(connection._keep))
    return connection


def disconnect(connection: Connection) -> None:
    """Stop keeping Ray's messages; shut Ray down in this process when :func:`connect` attached it."""
    connection._quiet.close()
    ray = sys.modules.get("ray")
    if connection.owned and ray is not None and ray.is_initialized():
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
    if connection.target is not None and connection.target.kind == "ray-client":
        host = connection.target.host or ""
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
