"""The one address grammar (``pipeline/address.py``) and the pieces of joining Ray that need no cluster.

The joins themselves (auth modes, wrong ports, Ray Client) run against real ``ray start`` nodes
in ``tests/cluster/test_real_cluster.py``.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from pydantic import ValidationError

from uqcampaign.kernels.errors import UQError
from uqcampaign.pipeline import ray_join
from uqcampaign.pipeline.address import parse_address
from uqcampaign.pipeline.config import ClusterSpec
from uqcampaign.pipeline.reduce import _check_address

GOOD = [
    ("local", "local", None, None, "local"),
    ("in-process", "in-process", None, None, "in-process"),
    ("auto", "auto", None, None, "auto"),
    ("127.0.0.1:6379", "ray", "127.0.0.1", 6379, "127.0.0.1:6379"),
    ("head.example.org:26379", "ray", "head.example.org", 26379, "head.example.org:26379"),
    ("[::1]:6379", "ray", "::1", 6379, "[::1]:6379"),
    ("ray://10.0.0.2:10001", "ray-client", "10.0.0.2", 10001, "ray://10.0.0.2:10001"),
    ("ray://head", "ray-client", "head", 10001, "ray://head:10001"),  # Ray's default client port
]
DASK = [("tcp://127.0.0.1:8786", "127.0.0.1", 8786), ("tls://sched:9000", "sched", 9000), ("tcp://sched", "sched", 8786)]
BAD = ["nowhere", "head", "127.0.0.1", "127.0.0.1:0", "127.0.0.1:70000", "udp://x:1", "ray://:10001", "ray://h:1/path", "http://h:80", ""]


@pytest.mark.parametrize(("text", "kind", "host", "port", "for_ray"), GOOD)
def test_good_forms(text, kind, host, port, for_ray):
    address = parse_address(text)
    assert (address.kind, address.host, address.port, address.for_ray) == (kind, host, port, for_ray)
    assert parse_address(text, purpose="reduce") == address
    assert address.joins_ray == (kind in ("auto", "ray", "ray-client"))


@pytest.mark.parametrize(("text", "host", "port"), DASK)
def test_dask_forms_are_for_reduce_only(text, host, port):
    address = parse_address(text, purpose="reduce")
    assert (address.kind, address.host, address.port) == ("dask", host, port)
    with pytest.raises(UQError, match=r"is a Dask scheduler: `uqc run` needs Ray .*`uqc reduce --address`"):
        parse_address(text)


@pytest.mark.parametrize("text", BAD)
def test_bad_forms_name_every_accepted_form(text):
    with pytest.raises(UQError, match=r"local, auto, in-process, HOST:PORT .*ray://HOST:10001") as caught:
        parse_address(text)
    assert repr(text.strip()) in str(caught.value)
    with pytest.raises(UQError, match=r"or tcp://HOST:8786 \(a Dask scheduler\)"):
        parse_address(text, purpose="reduce")


@pytest.mark.parametrize("text", [g[0] for g in GOOD] + [d[0] for d in DASK] + BAD)
def test_yaml_run_and_reduce_agree_with_the_grammar(text):
    """cluster.address (YAML), `uqc run --address` and `uqc reduce --address` accept exactly what the parser accepts."""

    def accepts(check) -> bool:
        try:
            check()
        except (UQError, ValidationError):
            return False
        return True

    assert accepts(lambda: ClusterSpec(address=text)) == accepts(lambda: parse_address(text))
    assert accepts(lambda: _check_address(text)) == accepts(lambda: parse_address(text, purpose="reduce"))


# -- auto --------------------------------------------------------------------------------------------


@pytest.fixture
def machine(monkeypatch, tmp_path):
    """``machine(running=[...], latest=None|str)``: the Ray clusters running here and `ray start`'s last one."""
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path))

    def set_up(running: list[str], latest: str | None = None) -> Path:
        monkeypatch.setattr(ray_join, "running_clusters", lambda: sorted(running))
        bootstrap = tmp_path / "ray" / "ray_current_cluster"
        if latest is not None:
            bootstrap.parent.mkdir(exist_ok=True)
            bootstrap.write_text(latest)
        return bootstrap

    return set_up


def test_auto_joins_what_ray_start_started(machine):
    machine(["10.0.0.1:6379"], latest="10.0.0.1:6379")
    notes: list[str] = []
    assert ray_join.resolve_auto(notes.append).text == "10.0.0.1:6379" and notes == []


def test_auto_with_two_clusters_says_which_it_joins(machine):
    machine(["10.0.0.1:6379", "10.0.0.1:7000"], latest="10.0.0.1:7000")
    notes: list[str] = []
    assert ray_join.resolve_auto(notes.append).text == "10.0.0.1:7000"
    assert len(notes) == 1 and "joining 10.0.0.1:7000" in notes[0] and "also running here: 10.0.0.1:6379" in notes[0]


def test_auto_with_two_clusters_and_none_from_ray_start_names_them(machine):
    machine(["10.0.0.1:6379", "10.0.0.1:7000"])
    with pytest.raises(UQError, match=r"auto could mean 2 Ray clusters running here \(10\.0\.0\.1:6379, 10\.0\.0\.1:7000\) .*--address HOST:PORT"):
        ray_join.resolve_auto()
    machine(["10.0.0.1:6379", "10.0.0.1:7000"], latest="10.0.0.9:1")  # stale: that cluster is gone
    with pytest.raises(UQError, match=r"10\.0\.0\.9:1, in .*\) no longer runs"):
        ray_join.resolve_auto()


def test_auto_without_a_cluster(machine):
    machine([])
    with pytest.raises(UQError, match="no Ray cluster to join at address auto"):
        ray_join.resolve_auto()
    machine(["10.0.0.1:6379"])  # e.g. another user's ray.init(): not joined unasked
    with pytest.raises(UQError, match=r"not started by `ray start` .* give --address 10\.0\.0\.1:6379"):
        ray_join.resolve_auto()


def test_auto_follows_ray_address(machine, monkeypatch):
    machine(["10.0.0.1:6379", "10.0.0.1:7000"])
    monkeypatch.setenv("RAY_ADDRESS", "ray://10.0.0.1:10001")
    assert ray_join.resolve_auto().for_ray == "ray://10.0.0.1:10001"
    monkeypatch.setenv("RAY_ADDRESS", "tcp://10.0.0.1:8786")
    with pytest.raises(UQError, match="RAY_ADDRESS=tcp://10.0.0.1:8786"):
        ray_join.resolve_auto()


def test_running_clusters_reads_the_raylets_of_this_machine():
    assert all(parse_address(address).kind == "ray" for address in ray_join.running_clusters())


# -- token and retry ---------------------------------------------------------------------------------


def test_token_is_found_in_rays_order(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    for name in ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        monkeypatch.delenv(name, raising=False)
    assert ray_join.find_token() is None
    (tmp_path / ".ray").mkdir()
    (tmp_path / ".ray" / "auth_token").write_text("home-token\n")
    assert ray_join.find_token() == ray_join.Token("home-token", str(tmp_path / ".ray" / "auth_token"))
    named = tmp_path / "named"
    named.write_text("named-token")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(named))
    assert ray_join.find_token() == ray_join.Token("named-token", str(named))
    monkeypatch.setenv("RAY_AUTH_TOKEN", "env-token")
    assert ray_join.find_token() == ray_join.Token("env-token", "$RAY_AUTH_TOKEN")


def test_retry_backs_off_then_succeeds_or_raises_the_last_error():
    calls: list[float] = []
    waits: list[float] = []

    def flaky() -> str:
        calls.append(time.monotonic())
        if len(calls) < 3:
            raise ConnectionError("Initialization failure from server:")
        return "joined"

    assert ray_join.retry(flaky, attempts=3, first_delay=0.01, retry_on=(ConnectionError,), on_retry=lambda n, e, d: waits.append(d)) == "joined"
    assert len(calls) == 3 and waits == [0.01, 0.02]
    calls.clear()
    with pytest.raises(ConnectionError):
        ray_join.retry(flaky, attempts=2, first_delay=0.0, retry_on=(ConnectionError,))
    with pytest.raises(ValueError):  # not retried
        ray_join.retry(lambda: int("x"), attempts=3, first_delay=10.0, retry_on=(ConnectionError,))
