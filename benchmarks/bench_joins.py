"""Joining a cluster as users do: every input of issue 10, what `uqc` does now, and how long it takes.

``python benchmarks/run.py --only joins``. Starts, on this machine, a ``ray start`` cluster with
token authentication (head + one worker node, 1 CPU each, the token in ``$HOME/.ray/auth_token``
of a temporary ``HOME``, as the README says), a second cluster without authentication, and a Dask
distributed scheduler; then runs each command of the table as a fresh ``uqc`` process with that
``HOME`` (so the token is the file's) and without ``RAY_AUTH_MODE`` unless the row sets it, and
times it from start to exit. Every process started is stopped by pid.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
UQC = str(Path(sys.executable).with_name("uqc"))


def _campaign(folder: Path, address: str | None = None) -> Path:
    """A campaign of 2 units of 4 chains × 10 draws on 8×8 images (the test campaign, short)."""
    import numpy as np

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    np.savez(folder / "gmm.npz", weights=np.array([0.4, 0.6]), means=rng.uniform(0, 1, (2, 1, 8, 8)), variances=np.full((2, 1, 8, 8), 0.05))
    spec = {
        "name": "joins", "store": "run.zarr", "seed": 3, "data": {"simulate": {"count": 1}},
        "operator": {"kind": "inpaint", "fraction": 0.5, "seed": 1}, "noise": {"sigma": 0.1},
        "prior": {"kind": "gmm", "file": "gmm.npz"}, "sampler": {"kind": "ula", "burn_in": 50, "thin": 2},
        "chains": 8, "draws": 10, "chunks": {"chains": 4, "draws": 5},
        "cluster": {"address": address or "local", "workers": 1, "gpus_per_worker": 0},
    }
    path = folder / "campaign.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def _run(args: list[str], env: dict[str, str], fresh_store: Path | None = None) -> tuple[str, float]:
    """(what happened, seconds) of ``uqc ARGS``: ``ok`` or the first line of its error."""
    if fresh_store is not None:
        subprocess.run(["rm", "-rf", str(fresh_store)], check=True)
    start = time.perf_counter()
    done = subprocess.run([UQC, *args], env=env, capture_output=True, text=True, timeout=600)
    seconds = time.perf_counter() - start
    if done.returncode == 0:
        return "ok", seconds
    lines = [line for line in done.stderr.strip().splitlines() if line.strip()]
    first = lines[-1] if lines else f"exit {done.returncode}"
    more = f" (+{len(lines) - 1} lines)" if len(lines) > 1 else ""
    return f"exit {done.returncode}: `{first}`{more}", seconds


def section(quick: bool = False) -> str:
    """The Markdown section of BENCHMARKS.md (``quick`` changes nothing: every row is one short command)."""
    from distributed import LocalCluster

    from uqcampaign.cluster.nodes import RayStartCluster

    rows: list[tuple[str, str, str, float]] = []
    with tempfile.TemporaryDirectory(prefix="uqj", dir="/tmp") as tmp:
        folder = Path(tmp)
        home = folder / "home"
        (home / ".ray").mkdir(parents=True)
        base = {key: value for key, value in os.environ.items() if not key.startswith("RAY_")}
        base.update(HOME=str(home), RAY_USAGE_STATS_ENABLED="0", RAY_TMPDIR=str(folder / "none"))
        token = subprocess.run([sys.executable, "-m", "ray.scripts.scripts", "get-auth-token", "--generate"], env=base,
                               capture_output=True, text=True, check=True)
        secret = (home / ".ray" / "auth_token").read_text().strip()
        assert secret, token.stderr
        auth = RayStartCluster(folder / "a", token=secret, cpus=1, gpus=0, n_workers=1)
        open_cluster = RayStartCluster(folder / "b", token=None, cpus=1, gpus=0, n_workers=0)
        campaign = _campaign(folder / "c")
        store = campaign.parent / "run.zarr"
        try:
            auth.start()
            open_cluster.start()
            with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, protocol="tcp", dashboard_address=None) as dask:
                gcs, client, sched = auth.gcs, auth.client, dask.scheduler_address
                tmpdir_auth = {"RAY_TMPDIR": str(auth.folder)}  # where `ray start` wrote ray_current_cluster
                cases = [
                    ("`uqc run --address HOST:PORT`, token in ~/.ray/auth_token, RAY_AUTH_MODE unset",
                     "24 s of `InvalidAuthToken` lines, then `cannot join ... check the address`", ["run", str(campaign), "--address", gcs], {}, True),
                    ("`uqc run --address ray://HOST:PORT`, same", "33 s, then `ray client connection timeout`",
                     ["run", str(campaign), "--address", client], {}, True),
                    ("`uqc run --address auto` on the head", "every join needed RAY_AUTH_MODE=token", ["run", str(campaign), "--address", "auto"], tmpdir_auth, True),
                    ("`cluster: {address: HOST:PORT}` in the YAML, `uqc run`", "refused by the YAML",
                     ["run", str(_campaign(folder / "y", gcs))], {}, False),
                    ("`uqc reduce STORE --address HOST:PORT`", "`reduce address ... is not understood`", ["reduce", str(store), "--address", gcs], {}, False),
                    ("`uqc reduce STORE --address ray://HOST:PORT`", "every join needed RAY_AUTH_MODE=token", ["reduce", str(store), "--address", client], {}, False),
                    ("`uqc reduce STORE --address auto`", "every join needed RAY_AUTH_MODE=token", ["reduce", str(store), "--address", "auto"], tmpdir_auth, False),
                    ("`uqc reduce STORE --address tcp://HOST:PORT` (Dask)", "`distributed` not installed", ["reduce", str(store), "--address", sched], {}, False),
                    ("`uqc run --address HOST:PORT`, no token anywhere", "20-33 s, ~20 `InvalidAuthToken` lines",
                     ["run", str(campaign), "--address", gcs], {"HOME": str(folder)}, True),
                    ("`uqc run --address ray://HOST:PORT`, wrong token", "33 s, `ray client connection timeout`",
                     ["run", str(campaign), "--address", client], {"RAY_AUTH_TOKEN": "not-the-token"}, True),
                    ("`RAY_AUTH_MODE=disabled uqc run --address HOST:PORT`", "20-33 s of `InvalidAuthToken` lines",
                     ["run", str(campaign), "--address", gcs], {"RAY_AUTH_MODE": "disabled"}, True),
                    ("`RAY_AUTH_MODE=token uqc run --address HOST:PORT` of a cluster without auth", "(plain `ray.init`, measured once) joins, then its actors die",
                     ["run", str(campaign), "--address", open_cluster.gcs], {"RAY_AUTH_MODE": "token"}, True),
                    ("`uqc run --address HOST:PORT` of a cluster without auth, token present", "-", ["run", str(campaign), "--address", open_cluster.gcs], {}, True),
                    ("`uqc run --address ray://GCS_PORT` (the wrong port)", "-", ["run", str(campaign), "--address", f"ray://{gcs}"], {}, True),
                    ("`uqc run --address CLIENT_PORT` (no ray://)", "-", ["run", str(campaign), "--address", client.removeprefix("ray://")], {}, True),
                    ("`uqc run --address auto`, 2 clusters running, none from `ray start` here", "Ray's `auto` joins any one found running",
                     ["run", str(campaign), "--address", "auto"], {}, True),
                    ("`uqc run --address 127.0.0.1:1` (nothing there)", "-", ["run", str(campaign), "--address", "127.0.0.1:1"], {}, True),
                ]
                for label, before, args, extra, fresh in cases:
                    outcome, seconds = _run(args, {**base, **extra}, store if fresh else None)
                    rows.append((label, before, outcome, seconds))
                    print(f"[joins] {label}: {outcome} ({seconds:.1f} s)", file=sys.stderr, flush=True)
                    if args[0] == "run" and outcome == "ok" and not store.exists():
                        raise RuntimeError(f"{label}: no store written")
        finally:
            killed = auth.stop() + open_cluster.stop()
            assert not auth.processes() and not open_cluster.processes()
    table = "\n".join(f"| {label} | {before} | {outcome} | {seconds:.1f} |" for label, before, outcome, seconds in rows)
    load = " / ".join(f"{x:.2f}" for x in os.getloadavg())
    return f"""## Joining a cluster: the frictions of issue 10, now

`python benchmarks/run.py --only joins` (`benchmarks/bench_joins.py`): a `ray start` cluster with token authentication
(head + worker node, the token made by `ray get-auth-token --generate` in a temporary `HOME`), a second cluster without
authentication and a Dask scheduler, all on this machine; each row is a fresh `uqc` process (a campaign of 2 units; `reduce`
on its store) with that `HOME` and no `RAY_AUTH_MODE` unless the row sets it. Seconds from start to exit, interpreter and
imports included. "Before" quotes issue 10 ("-": not in it). {len(killed)} processes stopped by pid afterwards. Load average after: {load}.

| input | before | now | s |
|---|---|---|---:|
{table}

`ray start --address HEAD:PORT` of a worker node without `RAY_AUTH_MODE=token` still fails (Ray's CLI, not `uqc`): the README
sets the variable on that command.
"""


if __name__ == "__main__":
    print(section())
