"""Joining a running Ray cluster (``uqc run``, ``uqc reduce``): auth that just works, failures in seconds.

:func:`prepare` runs before ``ray.init`` and imports no Ray, so the CLI calls it before anything
imports ``ray``; :func:`join` calls it again, then ``ray.init``. For a cluster address
(``auto``, ``host:port``, ``ray://host:port``, see :mod:`.address`) it

1. resolves ``auto``: ``$RAY_ADDRESS``, else the cluster ``ray start`` last started on this machine
   (``<RAY_TMPDIR or /tmp>/ray/ray_current_cluster``); when other Ray clusters run here too it says
   which one it joins, and when none was started by ``ray start`` but several run, it names them
   and asks for one instead of picking any;
2. opens a TCP connection (unreachable: one line within ``timeout`` s);
3. asks the server one gRPC question without a token (GCS ``GetClusterId``; Ray Client ``PING``),
   which tells in milliseconds whether the cluster uses token authentication, and asks again with
   the token (``$RAY_AUTH_TOKEN``, else the file ``$RAY_AUTH_TOKEN_PATH``, else
   ``~/.ray/auth_token``, Ray's own order) when it does;
4. sets ``RAY_AUTH_MODE`` to what the cluster needs when the user left it unset. Ray reads the
   variable when ``ray`` is imported (hence step 4 before the import); if ``ray`` is already
   imported but not initialised, Ray's config is reloaded, as Ray itself does in
   ``ray._private.authentication.authentication_token_setup._enable_token_auth``.

Measured with Ray 2.60 (``ray start`` nodes on this machine): without step 4, a driver with a
token but ``RAY_AUTH_MODE`` unset retries ``InvalidAuthToken`` for 24 s (``host:port``) or 33 s
(``ray://``) before an error that names neither the token nor the mode; a driver in token mode
joining a cluster *without* authentication connects, but its actors die before their first call.
Every mismatch is therefore one :class:`UQError` line, with Ray's own reason in it, before
``ray.init`` is called.

``ray.init`` through Ray Client is retried (3 attempts, 2 s then 4 s apart): a first connection
once failed after 44 s with an empty ``Initialization failure from server:`` and the retry worked.

:func:`quiet_ray_messages` keeps what Ray's GCS publishes to the driver (a lost node's
``Raylet is terminated`` with its ``[state-dump]`` log tail, "node marked dead", OOM kills) out
of the terminal: the caller receives each message and reports the event in its own line.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from uqcampaign.kernels.errors import UQError
from uqcampaign.pipeline.address import Address, parse_address

__all__ = [
    "Token",
    "find_token",
    "set_auth_mode",
    "default_token_path",
    "prepare",
    "join",
    "resolve_auto",
    "retry",
    "quiet_ray_messages",
    "QUIET_INIT",
    "AUTH_MODE_ENV",
]

AUTH_MODE_ENV = "RAY_AUTH_MODE"
TOKEN_ENV = "RAY_AUTH_TOKEN"
TOKEN_PATH_ENV = "RAY_AUTH_TOKEN_PATH"
# ray.init keywords of every uqc connection: Ray's warnings only, worker output stays on the nodes.
QUIET_INIT: dict[str, Any] = {"logging_level": logging.WARNING, "log_to_driver": False}
CLIENT_ATTEMPTS = 3
CLIENT_FIRST_DELAY_S = 2.0
# gRPC methods that answer without side effects: (method, serialized request).
_GCS_PING = ("/ray.rpc.NodeInfoGcsService/GetClusterId", b"")  # GetClusterIdRequest {}
_CLIENT_PING = ("/ray.rpc.RayletDriver/ClusterInfo", b"\x08\x06")  # ClusterInfoRequest {type: PING (6)}

Say = Callable[[str], None]


@dataclass(frozen=True)
class Token:
    """An auth token and where it was found (``$RAY_AUTH_TOKEN`` or a file path)."""

    value: str
    source: str


def default_token_path() -> Path:
    """``~/.ray/auth_token``: where ``ray start`` and ``ray get-auth-token --generate`` keep the token."""
    return Path.home() / ".ray" / "auth_token"


def find_token() -> Token | None:
    """The token Ray would send, in Ray's order: ``$RAY_AUTH_TOKEN``, ``$RAY_AUTH_TOKEN_PATH``, ``~/.ray/auth_token``."""
    value = os.environ.get(TOKEN_ENV, "").strip()
    if value:
        return Token(value, f"${TOKEN_ENV}")
    named = os.environ.get(TOKEN_PATH_ENV)
    path = Path(named).expanduser() if named else default_token_path()
    try:
        value = path.read_text().strip()
    except OSError:
        return None
    return Token(value, str(path)) if value else None


def _token_places() -> str:
    named = os.environ.get(TOKEN_PATH_ENV)
    return f"${TOKEN_ENV}, {'$' + TOKEN_PATH_ENV + '=' + named if named else default_token_path()}"


# ----------------------------------------------------------------------------- auto


def _ray_temp_dir() -> Path:
    """Ray's default temporary folder (``ray._common.utils.get_default_ray_temp_dir``), read without Ray."""
    base = os.environ.get("RAY_TMPDIR") or (os.environ.get("TMPDIR") if sys.platform.startswith("linux") else None) or "/tmp"
    return Path(base) / "ray"


def running_clusters() -> list[str]:
    """GCS addresses of the Ray clusters with a raylet on this machine (from the raylets' command lines)."""
    import psutil

    found = set()
    for process in psutil.process_iter(["name", "cmdline"]):
        if process.info["name"] != "raylet":
            continue
        for arg in process.info["cmdline"] or []:
            if arg.startswith("--gcs-address="):
                found.add(arg.split("=", 1)[1])
    return sorted(found)


def resolve_auto(say: Say | None = None) -> Address:
    """The cluster ``auto`` names (see the module docstring, step 1); UQError when it names none or is ambiguous."""
    env = os.environ.get("RAY_ADDRESS", "").strip()
    if env:
        try:
            resolved = parse_address(env, purpose="reduce")
        except UQError:
            resolved = None
        if resolved is None or resolved.kind not in ("ray", "ray-client"):
            raise UQError(f"RAY_ADDRESS={env} does not name a Ray cluster to join; use HOST:PORT or ray://HOST:PORT, or unset it")
        return resolved
    bootstrap = _ray_temp_dir() / "ray_current_cluster"
    try:
        latest = bootstrap.read_text().strip() or None
    except OSError:
        latest = None
    running = running_clusters()
    if latest is not None and (latest in running or not running):
        others = [address for address in running if address != latest]
        if others and say is not None:
            say(f"address auto: joining {latest}, the cluster `ray start` last started here ({bootstrap}); "
                f"also running here: {', '.join(others)} (give --address HOST:PORT to choose)")
        return parse_address(latest)
    if not running:
        raise UQError(
            f"no Ray cluster to join at address auto: none was started here by `ray start` ({bootstrap} is absent) "
            "and $RAY_ADDRESS is unset; start one with `ray start --head`, give --address HOST:PORT, or use --address local"
        )
    why = f"the one `ray start` last started ({latest}, in {bootstrap}) no longer runs" if latest else f"{bootstrap} is absent"
    if len(running) == 1:
        raise UQError(
            f"address auto: the Ray instance running here ({running[0]}) was not started by `ray start` ({why}); "
            f"give --address {running[0]} to join it"
        )
    raise UQError(
        f"address auto could mean {len(running)} Ray clusters running here ({', '.join(running)}) and none was started "
        f"by `ray start` ({why}); give one with --address HOST:PORT"
    )


# ----------------------------------------------------------------------------- probe and auth


def _tcp_probe(address: Address, timeout: float) -> None:
    try:
        with socket.create_connection((address.host, address.port), timeout=timeout):
            pass
    except OSError as exc:
        reason = "timed out" if isinstance(exc, TimeoutError) else (exc.strerror or type(exc).__name__)
        raise UQError(
            f"cannot reach the Ray cluster at {address.text} ({reason} within {timeout:g} s); "
            "start it with `ray start --head`, check the address, or use --address local"
        ) from None


def _ask(address: Address, token: str | None, timeout: float) -> tuple[str, str] | None:
    """``(gRPC status name, details)`` of one harmless call to the server, or None when it cannot be asked.

    None: grpcio is missing (Ray Client's extra) or the cluster uses TLS (``RAY_USE_TLS``), whose
    certificates this probe does not load; Ray then reports what happens itself.
    """
    if os.environ.get("RAY_USE_TLS", "0").lower() in ("1", "true"):
        return None
    try:
        import grpc
    except ImportError:
        return None
    method, request = _CLIENT_PING if address.kind == "ray-client" else _GCS_PING
    metadata = [("authorization", f"Bearer {token}")] if token else None
    with grpc.insecure_channel(address.hostport) as channel:
        call = channel.unary_unary(method, request_serializer=None, response_deserializer=None)
        try:
            call(request, timeout=timeout, metadata=metadata)
        except grpc.RpcError as exc:
            return exc.code().name, (exc.details() or "").strip()
    return "OK", ""


def _wrong_port(address: Address) -> UQError:
    if address.kind == "ray-client":
        return UQError(
            f"{address.text} answers, but not as a Ray Client server: for a head's GCS port give "
            f"--address {address.hostport} (no ray://), or use the Ray Client port (ray start --ray-client-server-port, default 10001)"
        )
    return UQError(
        f"{address.text} answers, but not as a Ray GCS: for a Ray Client port give --address ray://{address.hostport}, "
        "or use the head's GCS port (ray start --port, default 6379)"
    )


def _needed_mode(address: Address, timeout: float) -> str | None:
    """The ``RAY_AUTH_MODE`` the cluster needs (``token``/``disabled``), None when it cannot tell; UQError on any mismatch."""
    mode = os.environ.get(AUTH_MODE_ENV, "").strip().lower() or None
    answer = _ask(address, None, timeout)
    if answer is None:
        return None
    status, details = answer
    if status == "UNIMPLEMENTED":
        raise _wrong_port(address)
    if status == "OK":
        if mode == "token":
            raise UQError(
                f"RAY_AUTH_MODE=token but the Ray cluster at {address.text} does not use token authentication "
                f"(it answers without a token; the actors of a token-mode driver die on it): unset RAY_AUTH_MODE"
            )
        return "disabled"
    if status != "UNAUTHENTICATED":  # not ready, overloaded, ...: let Ray try and report
        return None
    if mode not in (None, "token"):
        raise UQError(
            f"the Ray cluster at {address.text} uses token authentication (Ray: {details}) but RAY_AUTH_MODE={mode}: "
            f"set RAY_AUTH_MODE=token (or unset it) with the cluster's token in {_token_places()}"
        )
    token = find_token()
    if token is None:
        raise UQError(
            f"the Ray cluster at {address.text} uses token authentication (Ray: {details}) and no token was found "
            f"({_token_places()}): copy the head's token (`ray get-auth-token` on the head) to {default_token_path()}; "
            "uqc then sets RAY_AUTH_MODE=token itself"
        )
    answer = _ask(address, token.value, timeout)
    if answer is not None and answer[0] == "UNAUTHENTICATED":
        raise UQError(
            f"the Ray cluster at {address.text} refused the token from {token.source} (Ray: {answer[1]}): "
            f"use the head's token (`ray get-auth-token` on the head) with RAY_AUTH_MODE=token"
        )
    return "token"


def set_auth_mode(mode: str) -> None:
    """Set ``RAY_AUTH_MODE`` (unless the user did); reload Ray's config when ``ray`` is imported but not initialised."""
    if os.environ.get(AUTH_MODE_ENV):
        return
    os.environ[AUTH_MODE_ENV] = mode
    ray = sys.modules.get("ray")
    if ray is not None and not ray.is_initialized():
        from ray._raylet import Config

        Config.initialize("")  # what Ray's own _enable_token_auth does before ray.init


def prepare(address: Address, *, timeout: float = 5.0, say: Say | None = None) -> Address:
    """Steps 1-4 of the module docstring for a cluster address; returns the address to give ``ray.init``.

    Other addresses are returned unchanged. Raises :class:`UQError` (one line, within about
    ``timeout`` s) for an unreachable cluster, a port of the wrong kind and every auth mismatch.
    """
    if not address.joins_ray:
        return address
    target = resolve_auto(say) if address.kind == "auto" else address
    if target.kind == "ray-client":
        try:
            import grpc  # noqa: F401  (Ray Client's extra)
        except ImportError:
            raise UQError(f"{target.text} needs Ray Client: pip install 'ray[client]' (a dependency of uqcampaign: reinstall it)") from None
    _tcp_probe(target, timeout)
    if _needed_mode(target, timeout) == "token":  # "disabled" is what an unset mode means when joining
        set_auth_mode("token")
    return target


# ----------------------------------------------------------------------------- join


def retry(call: Callable[[], Any], *, attempts: int, first_delay: float, retry_on: tuple[type[BaseException], ...],
          on_retry: Callable[[int, BaseException, float], None] | None = None) -> Any:
    """``call()``, again after ``first_delay``, ``2 × first_delay``, … s while it raises ``retry_on``; the last error propagates."""
    delay = first_delay
    for attempt in range(1, attempts + 1):
        try:
            return call()
        except retry_on as exc:
            if attempt == attempts:
                raise
            if on_retry is not None:
                on_retry(attempt, exc, delay)
            time.sleep(delay)
            delay *= 2
    raise AssertionError("unreachable")  # pragma: no cover


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0].strip() if text else type(exc).__name__


class _DropMessage(logging.Filter):
    """Drops one of Ray's log messages by its start (e.g. the Ray Client thread's SIGTERM notice)."""

    def __init__(self, start: str) -> None:
        super().__init__()
        self.start = start

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.start)


_SIGTERM_NOTICE = _DropMessage("SIGTERM handler is not set because current thread")


def join(address: Address, *, timeout: float = 5.0, say: Say | None = None) -> Address:
    """Attach this process to the running Ray cluster at ``address`` (``auto``, ``host:port``, ``ray://``).

    Returns the address joined (``auto`` resolved). Raises :class:`UQError` with Ray's reason.
    """
    target = prepare(address, timeout=timeout, say=say)
    import ray

    for name in ("ray._private.worker", "ray.util.client.logsclient"):  # Ray Client's server inits off its main thread
        logging.getLogger(name).addFilter(_SIGTERM_NOTICE)  # and streams its log records here

    def init() -> None:
        with warnings.catch_warnings():  # Ray Client's "connection timed out" warning: the error says it
            warnings.simplefilter("ignore", UserWarning)
            try:
                ray.init(address=target.for_ray, **QUIET_INIT)
            except BaseException:
                with contextlib.suppress(Exception):
                    ray.shutdown()  # a half-open Ray Client context would refuse the next attempt
                raise

    def retrying(attempt: int, exc: BaseException, delay: float) -> None:
        if say is not None:
            say(f"Ray Client at {target.text}: attempt {attempt} failed ({_first_line(exc)}); retrying in {delay:g} s")

    attempts = CLIENT_ATTEMPTS if target.kind == "ray-client" else 1
    try:
        retry(init, attempts=attempts, first_delay=CLIENT_FIRST_DELAY_S, retry_on=(ConnectionError, TimeoutError), on_retry=retrying)
    except (ConnectionError, TimeoutError, RuntimeError) as exc:
        tries = f" after {attempts} attempts" if attempts > 1 else ""
        raise UQError(f"cannot join the Ray cluster at {target.text}{tries}: {_first_line(exc)}") from None
    return target


# ----------------------------------------------------------------------------- quiet


@contextlib.contextmanager
def quiet_ray_messages(sink: Callable[[str], None]) -> Iterator[None]:
    """Hand the messages Ray's GCS publishes to the driver (``(raylet) ...``) to ``sink`` instead of stdout.

    Ray's driver prints them from a background thread (``ray._private.worker.listen_error_messages``
    → ``print_to_stdstream``); a lost node prints its raylet's last 20 log lines that way, twice.
    ``sink`` receives each message's text. Worker output is already kept on the nodes by
    ``log_to_driver=False``. If this Ray has no such hook, messages print as before.
    """
    try:
        from ray._private import worker as ray_worker
    except ImportError:  # pragma: no cover - Ray absent
        yield
        return
    original = getattr(ray_worker, "print_to_stdstream", None)
    if original is None:  # pragma: no cover - another Ray layout
        yield
        return

    def filtered(data: dict[str, Any], *args: Any, **kwargs: Any) -> None:
        if data.get("pid") == "raylet":
            for line in data.get("lines", []):
                sink(str(line))
            return
        original(data, *args, **kwargs)

    ray_worker.print_to_stdstream = filtered
    try:
        yield
    finally:
        ray_worker.print_to_stdstream = original
