"""`reduce_store`: summary/ equals a direct numpy computation, bounded memory, coverage, bad stores."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr
import zarr

from uqcampaign.kernels.errors import UQError
from uqcampaign.kernels.operators import build_operator
from uqcampaign.pipeline.diagnostics import summarize
from uqcampaign.pipeline.reduce import choose_tile, reduce_store

SIGMA = 0.1
OP_SPEC = {"kind": "inpaint", "fraction": 0.5, "seed": 0}


def write_store(
    path: Path | str,
    samples: np.ndarray,
    *,
    x_true: np.ndarray | None,
    y: np.ndarray,
    chunks: tuple[int, int],
    done: np.ndarray | None = None,
    op_spec: dict = OP_SPEC,
    level: float = 0.9,
    sigma: float = SIGMA,
) -> zarr.Group:
    """A store with the layout of DESIGN §4 written with zarr directly.

    ``samples: (M, chains, draws, C, H, W)``; chunks of draws past ``done: (M, chains)``
    (default: all done) are left unwritten (NaN fill), as a campaign stopped midway leaves them.
    """
    m, chains, draws, c, h, w = samples.shape
    cc, cd = chunks
    done = np.full((m, chains), draws, dtype=np.int32) if done is None else done.astype(np.int32)
    g = zarr.open_group(str(path), mode="w", zarr_format=3)
    campaign = {"name": "t", "chains": chains, "draws": draws, "noise": {"sigma": sigma}, "reduce": {"level": level}, "operator": op_spec}
    g.attrs.update(
        {
            "uqcampaign_version": "test",
            "layout": 2,
            "campaign": json.dumps(campaign),
            "config_hash": "test",
            "operator": json.dumps(op_spec),
            "img_shape": [c, h, w],
            "sizes": json.dumps({"measurement": m, "chain": chains, "draw": draws}),
            "initialized": 1,
        }
    )
    arr = g.create_array("samples", shape=samples.shape, chunks=(1, cc, cd, c, h, w), dtype="float32", fill_value=np.nan,
                         dimension_names=["measurement", "chain", "draw", "channel", "y", "x"])
    for i in range(m):
        for j in range(0, chains, cc):
            for k in range(0, draws, cd):
                if done[i, j : j + cc].min() >= min(k + cd, draws):
                    arr[i, j : j + cc, k : k + cd] = samples[i, j : j + cc, k : k + cd]
    g.create_array("draws_done", data=done, chunks=(1, cc), dimension_names=["measurement", "chain"])
    g.create_array("y_obs", data=y.astype(np.float32), chunks=(1, *y.shape[1:]), dimension_names=["measurement", "obs_channel", "obs_y", "obs_x"])
    if x_true is not None:
        g.create_array("x_true", data=x_true.astype(np.float32), chunks=(1, c, h, w), dimension_names=["measurement", "channel", "y", "x"])
    return g


def simulate(rng: np.random.Generator, m: int, chains: int, draws: int, img: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """AR(1) chains around a truth, and ``y = A x_true + σ ε``: ``(samples, x_true, y)``."""
    x_true = rng.uniform(0, 1, (m, *img))
    noise = np.empty((m, chains, draws, *img))
    noise[:, :, 0] = rng.standard_normal((m, chains, *img))
    for t in range(1, draws):
        noise[:, :, t] = 0.5 * noise[:, :, t - 1] + rng.standard_normal((m, chains, *img))
    samples = (x_true[:, None, None] + 0.1 * noise).astype(np.float32)
    op = build_operator(OP_SPEC, img)
    y = op.A(torch.from_numpy(x_true)).numpy() + SIGMA * rng.standard_normal((m, *op.obs_shape))
    return samples, x_true, y


def expected(samples: np.ndarray, x_true: np.ndarray, y: np.ndarray, level: float) -> dict[str, np.ndarray]:
    """The summary computed directly in numpy (and the operator in torch)."""
    m, chains, draws, c, h, w = samples.shape
    flat = samples.reshape(m, chains, draws, -1).transpose(0, 3, 1, 2).astype(np.float64)  # (M, P, chain, draw)
    out = {k: [] for k in ("mean", "std", "ci_lower", "ci_upper", "rhat", "ess_bulk", "ess_tail", "mcse_mean")}
    for i in range(m):
        s = summarize(flat[i], level=level)
        for k in out:
            out[k].append(getattr(s, k).reshape(c, h, w))
    res = {k: np.stack(v) for k, v in out.items()}
    values = samples.reshape(m, chains * draws, -1).astype(np.float64)
    np.testing.assert_allclose(res["mean"].reshape(m, -1), values.mean(axis=1), rtol=1e-12)
    np.testing.assert_allclose(res["ci_lower"].reshape(m, -1), np.quantile(values, (1 - level) / 2, axis=1), rtol=1e-12)
    res["error"] = res["mean"] - x_true.astype(np.float32)
    res["covered"] = (res["ci_lower"] <= x_true.astype(np.float32)) & (x_true.astype(np.float32) <= res["ci_upper"])
    res["coverage"] = res["covered"].reshape(m, -1).mean(axis=1)
    op = build_operator(OP_SPEC, (c, h, w)).to(dtype=torch.float64)
    ax = op.A(torch.from_numpy(samples.reshape(-1, c, h, w).astype(np.float64))).numpy().reshape(m, chains, draws, -1)
    resid = ax - y.astype(np.float32).astype(np.float64).reshape(m, 1, 1, -1)
    res["chi2_draws"] = (resid**2).sum(axis=-1) / (SIGMA**2 * resid.shape[-1])
    res["chi2"] = res["chi2_draws"].mean(axis=(1, 2))
    return res


def test_reduce_equals_direct_numpy(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    samples, x_true, y = simulate(rng, m=2, chains=8, draws=40, img=(2, 6, 5))
    path = tmp_path / "s.zarr"
    write_store(path, samples, x_true=x_true, y=y, chunks=(4, 10))
    reduce_store(str(path), progress=False, tile=(4, 3))  # tiles that do not divide the image
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # consolidated, dimension names: no warning
        ds = xr.open_zarr(path, group="summary")
    want = expected(samples, x_true, y, level=0.9)
    for key, value in want.items():
        got = ds[key].values
        if key == "covered":
            assert got.dtype == bool
            np.testing.assert_array_equal(got, value)
        else:
            np.testing.assert_allclose(got, value, rtol=1e-10, atol=1e-12, err_msg=key)
    assert ds["rhat"].dims == ("measurement", "channel", "y", "x")
    assert ds["chi2_draws"].dims == ("measurement", "chain", "draw")
    assert ds["ci_lower"].attrs["level"] == 0.9
    assert ds["draws_used"].values.tolist() == [40, 40]
    # a second reduce replaces the summary (level from the argument)
    reduce_store(str(path), level=0.5, progress=False)
    again = xr.open_zarr(path, group="summary")
    want = expected(samples, x_true, y, level=0.5)
    np.testing.assert_allclose(again["ci_upper"].values, want["ci_upper"], rtol=1e-10)
    assert again["ci_upper"].attrs["level"] == 0.5


def test_partial_draws_use_complete_rectangle(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    samples, _, y = simulate(rng, m=3, chains=4, draws=30, img=(1, 3, 4))
    done = np.array([[30, 30, 20, 20], [30, 30, 30, 30], [0, 0, 30, 30]])  # measurement 2: half its chains not started
    path = tmp_path / "s.zarr"
    write_store(path, samples, x_true=None, y=y, chunks=(2, 10), done=done)
    with pytest.warns(UserWarning, match=r"measurements \[2\]"):
        summary = reduce_store(str(path), progress=False)
    assert summary["draws_used"][...].tolist() == [20, 30, 0]
    flat = samples[0, :, :20].reshape(4, 20, -1).transpose(2, 0, 1)
    np.testing.assert_allclose(summary["rhat"][0].reshape(-1), summarize(flat).rhat, rtol=1e-12)
    np.testing.assert_allclose(summary["mean"][0].reshape(-1), flat.astype(np.float64).mean(axis=(1, 2)), rtol=1e-12)
    assert np.all(np.isnan(summary["mean"][2])) and np.isnan(summary["chi2"][2])
    chi2 = summary["chi2_draws"][...]
    assert np.all(np.isfinite(chi2[0, :, :20])) and np.all(np.isnan(chi2[0, :, 20:]))  # only the draws used
    np.testing.assert_allclose(summary["chi2"][0], chi2[0, :, :20].mean(), rtol=1e-12)
    assert "coverage" not in summary and "error" not in summary


def test_store_without_draws_is_refused(tmp_path: Path) -> None:
    samples, _, y = simulate(np.random.default_rng(2), m=1, chains=2, draws=10, img=(1, 2, 2))
    path = tmp_path / "empty.zarr"
    write_store(path, samples, x_true=None, y=y, chunks=(2, 10), done=np.zeros((1, 2)))
    with pytest.raises(UQError, match="run the campaign first"):
        reduce_store(str(path), progress=False)
    write_store(path, samples, x_true=None, y=y, chunks=(1, 10), done=np.array([[10, 0]]))
    with pytest.raises(UQError, match="in every chain"):
        reduce_store(str(path), progress=False)


def test_bad_arguments_are_refused(tmp_path: Path) -> None:
    samples, _, y = simulate(np.random.default_rng(3), m=1, chains=2, draws=10, img=(1, 2, 2))
    path = tmp_path / "s.zarr"
    write_store(path, samples, x_true=None, y=y, chunks=(2, 10))
    with pytest.raises(UQError, match="not understood"):
        reduce_store(str(path), address="udp://x", progress=False)
    with pytest.raises(UQError, match="outside"):
        reduce_store(str(path), level=1.5, progress=False)
    with pytest.raises(UQError, match="does not fit"):
        reduce_store(str(path), tile=(3, 1), progress=False)
    try:
        import distributed  # noqa: F401
    except ImportError:
        with pytest.raises(UQError, match="dask.distributed"):
            reduce_store(str(path), address="tcp://127.0.0.1:1", progress=False)
    with pytest.raises(UQError, match="no store"):
        reduce_store(str(tmp_path / "absent.zarr"), progress=False)


def test_choose_tile_fits_the_budget() -> None:
    assert choose_tile((3, 64, 64), 1000, 10**9) == (20, 64, 64)
    k, ty, tx = choose_tile((3, 64, 64), 32000, 64 * 2**20)
    assert k == 1 and tx == 64 and 3 * ty * tx * 32000 * 4 <= 64 * 2**20
    assert choose_tile((3, 64, 64), 32000, 1) == (1, 1, 1)


def test_exact_posterior_coverage(tmp_path: Path) -> None:
    """Exact posterior draws: the 90% intervals cover the truth 90% of the time."""
    from uqcampaign.kernels.problems import random_problem

    n_meas, chains, draws = 120, 4, 100
    problem = random_problem("inpaint", "gmm", seed=0)
    prior, op, sigma = problem.prior, problem.operator, problem.sigma
    gen = torch.Generator().manual_seed(0)
    samples, x_true, y = [], [], []
    for _ in range(n_meas):  # truth from the prior, y = A x + σ ε, draws from the exact posterior
        x = prior.sample(1, gen)
        y_m = op.A(x)[0] + sigma * torch.randn(op.obs_shape, generator=gen, dtype=x.dtype)
        post = prior.posterior(op, y_m, sigma).sample(chains * draws, gen)
        samples.append(post.reshape(chains, draws, *post.shape[1:]).numpy())
        x_true.append(x[0].numpy())
        y.append(y_m.numpy())
    samples_a = np.stack(samples).astype(np.float32)
    truth = np.stack(x_true)
    y_a = np.stack(y)
    c, h, w = samples_a.shape[3:]
    path = tmp_path / "exact.zarr"
    write_store(path, samples_a, x_true=truth, y=y_a, chunks=(4, 50), op_spec=problem.operator_spec, sigma=sigma)
    summary = reduce_store(str(path), progress=False)
    covered = summary["covered"][...].reshape(n_meas, -1)
    per_pixel = covered.mean(axis=0)  # coverage of each pixel over the measurements
    se_pooled = np.sqrt(0.9 * 0.1 / covered.size)
    assert abs(per_pixel.mean() - 0.9) < 3 * se_pooled, (per_pixel.mean(), se_pooled)
    se_pixel = np.sqrt(0.9 * 0.1 / n_meas)
    assert np.all(np.abs(per_pixel - 0.9) < 4 * se_pixel), per_pixel  # 4 SE: Bonferroni-like over pixels
    np.testing.assert_allclose(summary["coverage"][...], covered.mean(axis=1))


MEMORY_SCRIPT = textwrap.dedent(
    """
    import sys
    from uqcampaign.pipeline.reduce import reduce_store

    def hwm():  # peak resident set size (bytes) since the last reset
        status = open("/proc/self/status").read()
        return int(status.split("VmHWM:")[1].split()[0]) * 1024

    reduce_store(sys.argv[1], progress=False)  # warm-up on a small store: imports, thread pools, torch
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak to the memory in use now (Linux >= 4.0)
    base = hwm()
    reduce_store(sys.argv[2], progress=False, memory_budget=int(sys.argv[3]))
    print(base, hwm())
    """
)


def test_reduce_memory_is_bounded_by_a_tile(tmp_path: Path) -> None:
    """Peak RSS growth of a reduce stays far below the store size: a tile per worker, not the store."""
    rng = np.random.default_rng(4)
    m, chains, draws, img = 2, 16, 200, (1, 40, 40)  # 2 × 3200 draws × 1600 px × 4 B = 39 MiB of draws
    samples = rng.standard_normal((m, chains, draws, *img), dtype=np.float32)
    y = rng.standard_normal((m, *img)).astype(np.float32)
    write_store(tmp_path / "big.zarr", samples, x_true=None, y=y, chunks=(4, 50))
    write_store(tmp_path / "small.zarr", samples[:1, :8, :20, :, :8, :8], x_true=None, y=y[:1, :, :8, :8], chunks=(8, 10))
    budget = 6 * 2**20
    args = [str(tmp_path / "small.zarr"), str(tmp_path / "big.zarr"), str(budget)]
    # reduce_store itself fixes glibc's mmap threshold, so RSS is the memory in use (no env needed)
    out = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT, *args], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    base, peak = map(int, out.stdout.split()[-2:])
    growth = peak - base
    # the budget (tiles, diagnostics and χ² temporaries of the 2 threads), plus per thread a storage chunk
    # being decoded and its copy (4·4·50·1600 B = 1.3 MB), plus 8 MiB for the interpreter's own bookkeeping
    bound = budget + 2 * 2 * (4 * 4 * 50 * 40 * 40) + 8 * 2**20
    print(f"store {samples.nbytes / 2**20:.0f} MiB, peak RSS growth {growth / 2**20:.1f} MiB, bound {bound / 2**20:.0f} MiB")
    assert growth < bound < samples.nbytes / 2, f"peak RSS grew by {growth / 2**20:.0f} MiB (bound {bound / 2**20:.0f} MiB)"
    summary = zarr.open_group(str(tmp_path / "big.zarr"), mode="r")["summary"]
    assert summary["rhat"].chunks[2] < img[1]  # it did tile the image
    assert np.isfinite(summary["rhat"][...]).all()


def test_reduce_on_ray(tmp_path: Path) -> None:
    """Dask-on-Ray: the same graph on a (local) Ray cluster gives the same summary."""
    ray = pytest.importorskip("ray")
    samples, x_true, y = simulate(np.random.default_rng(5), m=2, chains=4, draws=20, img=(1, 4, 4))
    path = tmp_path / "s.zarr"
    write_store(path, samples, x_true=x_true, y=y, chunks=(2, 10))
    local = {k: np.asarray(v[...]) for k, v in reduce_store(str(path), progress=False, tile=(2, 4)).arrays()}
    ray_dir = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # Ray's socket paths must stay short
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False, _temp_dir=ray_dir)
    try:
        remote = reduce_store(str(path), address="auto", progress=False, tile=(2, 4))
        for key, value in local.items():
            np.testing.assert_array_equal(np.asarray(remote[key][...]), value, err_msg=key)
    finally:
        ray.shutdown()
        shutil.rmtree(ray_dir, ignore_errors=True)


def test_reduce_on_dask_distributed(tmp_path: Path) -> None:
    """tcp://HOST:PORT: the same graph on a Dask distributed scheduler gives the same summary."""
    from distributed import LocalCluster

    samples, x_true, y = simulate(np.random.default_rng(6), m=2, chains=4, draws=20, img=(1, 4, 4))
    path = tmp_path / "s.zarr"
    write_store(path, samples, x_true=x_true, y=y, chunks=(2, 10))
    local = {k: np.asarray(v[...]) for k, v in reduce_store(str(path), progress=False, tile=(2, 4)).arrays()}
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, protocol="tcp", dashboard_address=None) as cluster:
        assert cluster.scheduler_address.startswith("tcp://")
        remote = reduce_store(str(path), address=cluster.scheduler_address, progress=False, tile=(2, 4))
        for key, value in local.items():
            np.testing.assert_array_equal(np.asarray(remote[key][...]), value, err_msg=key)
