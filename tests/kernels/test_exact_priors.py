"""Exact priors ``gaussian`` / ``gmm``: Tweedie denoiser, sampling, loading and input errors."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from uqcampaign.kernels.errors import UQError
from uqcampaign.kernels.problems import random_prior
from uqcampaign.kernels.priors.base import ExactPrior, LatentPrior, Prior
from uqcampaign.kernels.priors.gaussian_mixture import GaussianMixturePrior
from uqcampaign.kernels.priors.registry import PRIOR_KINDS, build_prior
from uqcampaign.kernels.schedule import linear_alphas_cumprod

REPO = Path(__file__).resolve().parents[2]
F64 = torch.float64


def assert_close(got: torch.Tensor, expected: torch.Tensor, rtol: float = 0.0, atol: float = 0.0) -> None:
    """Elementwise |got - expected| <= atol + rtol |expected| (torch.testing's import costs ~4 s)."""
    assert got.shape == expected.shape, (got.shape, expected.shape)
    err = (got - expected).abs() - rtol * expected.abs()
    assert float(err.max()) <= atol, f"max error {float((got - expected).abs().max()):.3g} > atol {atol} (rtol {rtol})"


def random_gmm(k: int, shape: tuple[int, int, int], seed: int) -> GaussianMixturePrior:
    """``k`` overlapping diagonal components on ``shape`` images (the random problems' GMM, float64)."""
    return random_prior("gmm", seed, shape, components=k)[0]


def random_spd(d: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    b = torch.randn(d, d, generator=g, dtype=F64)
    return 0.02 * (b @ b.T / d + 0.2 * torch.eye(d, dtype=F64))


# --------------------------------------------------------------------------- denoiser


def test_denoise_equals_numerical_tweedie_on_a_two_pixel_grid() -> None:
    """E[x0 | x_t] by dense integration of p(x0) N(x_t; sqrt(ᾱ) x0, 1-ᾱ) on a fine 2-D grid."""
    prior = random_gmm(3, (1, 1, 2), seed=1)
    grid = torch.linspace(-2.0, 3.0, 401, dtype=F64)  # step 0.0125: Riemann error ~ exp(-2π²σ²/h²), negligible
    x1, x2 = torch.meshgrid(grid, grid, indexing="ij")
    points = torch.stack([x1.reshape(-1), x2.reshape(-1)], dim=1)  # (N, 2)
    log_prior = prior.log_prob(points.reshape(-1, 1, 1, 2))
    ab_all = linear_alphas_cumprod()
    steps = [5, 50, 300, 999]
    x_t = torch.tensor([[0.3, 0.9], [1.1, -0.2], [0.5, 0.5], [2.0, -1.0]], dtype=F64)
    for t, xt in zip(steps, x_t):
        ab = float(ab_all[t])
        log_lik = -0.5 * (xt - math.sqrt(ab) * points).square().sum(1) / (1 - ab)
        post = torch.softmax(log_prior + log_lik, dim=0)
        expected = (post[:, None] * points).sum(0)
        got = prior.denoise(xt.reshape(1, 1, 1, 2), t).reshape(2)
        assert_close(got, expected, rtol=0, atol=1e-10)


def test_denoise_full_covariance_matches_gaussian_formula() -> None:
    """m + sqrt(ᾱ) Σ (ᾱ Σ + (1-ᾱ) I)⁻¹ (x_t - sqrt(ᾱ) m) for a full-covariance gaussian."""
    shape, d = (1, 2, 3), 6
    cov = random_spd(d, seed=2)
    mean = torch.linspace(0.1, 0.9, d, dtype=F64).reshape(shape)
    prior = GaussianMixturePrior.gaussian(mean, covariance=cov)
    g = torch.Generator().manual_seed(3)
    x_t = torch.randn(4, *shape, generator=g, dtype=F64)
    t = torch.tensor([0, 10, 400, 999])
    ab = linear_alphas_cumprod()[t]
    m = mean.reshape(d)
    expected = torch.stack(
        [
            m + a.sqrt() * cov @ torch.linalg.solve(a * cov + (1 - a) * torch.eye(d, dtype=F64), x.reshape(d) - a.sqrt() * m)
            for a, x in zip(ab, x_t)
        ]
    )
    assert_close(prior.denoise(x_t, t).reshape(4, d), expected, rtol=0, atol=1e-12)


def test_diagonal_covariance_given_in_full_gives_the_same_prior() -> None:
    g = torch.Generator().manual_seed(4)
    mean = torch.rand(1, 3, 3, generator=g, dtype=F64)
    var = 0.01 + 0.1 * torch.rand(1, 3, 3, generator=g, dtype=F64)
    diag = GaussianMixturePrior.gaussian(mean, var)
    full = GaussianMixturePrior.gaussian(mean, covariance=torch.diag(var.reshape(-1)))
    x = torch.randn(5, 1, 3, 3, generator=g, dtype=F64)
    assert_close(full.denoise(x, 123), diag.denoise(x, 123), rtol=0, atol=1e-12)
    assert_close(full.log_prob(x), diag.log_prob(x), rtol=1e-12, atol=1e-12)
    assert_close(full.covariances(), diag.covariances(), rtol=0, atol=1e-15)


def test_denoise_batched_timesteps_match_one_at_a_time() -> None:
    prior = random_gmm(4, (1, 4, 4), seed=5)
    x = prior.sample(6, torch.Generator().manual_seed(6)) * 0.9 + 0.1
    t = torch.tensor([0, 1, 100, 500, 998, 999])
    batched = prior.denoise(x, t)
    for i, ti in enumerate(t.tolist()):
        assert_close(batched[i : i + 1], prior.denoise(x[i : i + 1], ti), rtol=0, atol=1e-14)
    assert batched.shape == x.shape and batched.dtype == F64


def test_denoise_is_differentiable_and_float32_follows_input() -> None:
    prior = random_gmm(3, (1, 1, 3), seed=7)
    x = torch.randn(2, 1, 1, 3, dtype=F64, generator=torch.Generator().manual_seed(8), requires_grad=True)
    assert torch.autograd.gradcheck(lambda z: prior.denoise(z, 250), (x,))
    x32 = x.detach().float()
    out32 = prior.to(dtype=torch.float32).denoise(x32, 250)
    assert out32.dtype == torch.float32
    assert_close(out32.double(), prior.denoise(x.detach(), 250), rtol=0, atol=1e-5)
    assert prior.consistency(x32, 250).dtype == torch.float32  # casts to its input


def test_score_is_the_gradient_of_the_noised_log_density() -> None:
    prior = random_gmm(3, (1, 2, 2), seed=9)
    t = 200
    ab = float(linear_alphas_cumprod()[t])
    noised = GaussianMixturePrior(prior.weights, math.sqrt(ab) * prior.means, ab * prior.variances + 1 - ab)
    x = torch.randn(3, 1, 2, 2, dtype=F64, generator=torch.Generator().manual_seed(10), requires_grad=True)
    (grad,) = torch.autograd.grad(noised.log_prob(x).sum(), x)
    assert_close(prior.score(x.detach(), t), grad, rtol=1e-10, atol=1e-10)


def test_log_prob_of_full_gaussian_matches_torch_distribution() -> None:
    cov = random_spd(4, seed=11)
    mean = torch.full((1, 2, 2), 0.5, dtype=F64)
    prior = GaussianMixturePrior.gaussian(mean, covariance=cov)
    x = torch.rand(5, 1, 2, 2, dtype=F64, generator=torch.Generator().manual_seed(12))
    ref = torch.distributions.MultivariateNormal(mean.reshape(4), covariance_matrix=cov).log_prob(x.reshape(5, 4))
    assert_close(prior.log_prob(x), ref, rtol=1e-12, atol=1e-12)


# --------------------------------------------------------------------------- sampling


def test_mixture_samples_have_the_exact_mean_and_variance() -> None:
    prior = random_gmm(3, (1, 1, 3), seed=13)
    n = 20_000
    x = prior.sample(n, torch.Generator().manual_seed(14)).reshape(n, 3)
    w, m, v = prior.weights[:, None], prior.means.reshape(3, 3), prior.variances.reshape(3, 3)
    mean = (w * m).sum(0)
    var = (w * (v + m**2)).sum(0) - mean**2
    delta = m - mean
    mu4 = (w * (delta**4 + 6 * delta**2 * v + 3 * v**2)).sum(0)  # 4th central moment of the mixture
    assert ((x.mean(0) - mean).abs() <= 4 * (var / n).sqrt()).all()
    assert ((x.var(0) - var).abs() <= 4 * ((mu4 - var**2) / n).sqrt()).all()


def test_full_covariance_samples_have_the_exact_covariance() -> None:
    d, n = 4, 20_000
    cov = random_spd(d, seed=15)
    prior = GaussianMixturePrior.gaussian(torch.zeros(1, 2, 2, dtype=F64), covariance=cov)
    x = prior.sample(n, torch.Generator().manual_seed(16)).reshape(n, d)
    emp = x.T @ x / n  # known zero mean
    se = ((cov**2 + torch.outer(cov.diagonal(), cov.diagonal())) / n).sqrt()
    assert ((emp - cov).abs() <= 4 * se).all()


def test_sampling_is_reproducible_from_the_generator() -> None:
    prior = random_gmm(3, (1, 2, 2), seed=17)
    a = prior.sample(10, torch.Generator().manual_seed(5))
    b = prior.sample(10, torch.Generator().manual_seed(5))
    assert torch.equal(a, b) and a.shape == (10, 1, 2, 2)


def test_exact_prior_satisfies_the_protocols() -> None:
    prior = random_gmm(2, (1, 2, 2), seed=18)
    assert isinstance(prior, Prior) and isinstance(prior, ExactPrior)
    assert not isinstance(prior, LatentPrior)
    assert prior.is_latent is False and prior.kind == "gmm"
    assert prior.alphas_cumprod.dtype == F64 and prior.alphas_cumprod.shape == (1000,)
    assert prior.to(dtype=torch.float32).alphas_cumprod.dtype == F64


# --------------------------------------------------------------------------- loading


def save_npz(path: Path, **arrays: np.ndarray) -> Path:
    np.savez(path, **arrays)
    return path


def test_build_prior_gmm_file_relative_to_root_and_describe_round_trip(tmp_path: Path) -> None:
    prior = random_gmm(3, (1, 2, 2), seed=19)
    save_npz(tmp_path / "p.npz", weights=prior.weights.numpy(), means=prior.means.numpy(), variances=prior.variances.numpy())
    built = build_prior({"kind": "gmm", "file": "p.npz"}, root=tmp_path)
    assert torch.equal(built.means, prior.means) and torch.equal(built.variances, prior.variances)
    described = built.describe()
    assert described == {"kind": "gmm", "file": "p.npz", "img_shape": [1, 2, 2], "components": 3, "covariance": "diagonal"}
    again = build_prior(described, root=tmp_path)
    assert torch.equal(again.weights, built.weights)
    with pytest.raises(UQError, match="components = 4"):
        build_prior({**described, "components": 4}, root=tmp_path)


def test_build_prior_gaussian_inline_and_from_files(tmp_path: Path) -> None:
    inline = build_prior({"kind": "gaussian", "shape": [1, 8, 8], "mean": 0.5, "variance": 0.04, "file": None})
    assert inline.kind == "gaussian" and inline.img_shape == (1, 8, 8)
    assert torch.equal(inline.means, torch.full((1, 1, 8, 8), 0.5, dtype=F64))
    assert torch.equal(inline.variances, torch.full((1, 1, 8, 8), 0.04, dtype=F64))
    assert build_prior(inline.describe()).describe() == inline.describe()

    mean = np.linspace(0, 1, 4).reshape(1, 2, 2)
    cov = random_spd(4, seed=20).numpy()
    full = build_prior({"kind": "gaussian", "file": str(save_npz(tmp_path / "g.npz", mean=mean, covariance=cov))})
    assert_close(full.covariances()[0], torch.from_numpy(cov), rtol=0, atol=1e-14)
    assert full.describe()["covariance"] == "full"
    diag = build_prior({"kind": "gaussian", "file": "d.npz"}, root=save_npz(tmp_path / "d.npz", mean=mean, variance=mean + 0.1).parent)
    assert torch.equal(diag.variances[0], torch.from_numpy(mean + 0.1))


def test_loading_a_gmm_never_imports_diffusers(tmp_path: Path) -> None:
    assert set(PRIOR_KINDS) == {"gaussian", "gmm", "diffusion", "consistency", "latent-consistency"}
    code = (
        "import sys\nfrom uqcampaign.kernels.priors.registry import build_prior\n"
        f"build_prior({{'kind': 'gmm', 'file': {str(REPO / 'priors' / 'digits16.npz')!r}}})\n"
        "assert 'diffusers' not in sys.modules and 'transformers' not in sys.modules, 'heavy import'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_shipped_digits_prior_is_the_documented_fit() -> None:
    from uqcampaign.kernels.priors.digits_gmm import fit_digits_gmm

    path = REPO / "priors" / "digits16.npz"
    assert path.stat().st_size < 64_000
    with np.load(path) as data:
        assert {data[k].dtype for k in data.files} == {np.dtype(np.float32)}
    shipped = build_prior({"kind": "gmm", "file": "priors/digits16.npz"}, root=REPO)
    assert shipped.img_shape == (1, 16, 16) and shipped.weights.shape == (8,)
    assert float(shipped.means.min()) >= 0.0 and float(shipped.means.max()) <= 1.0
    assert float(shipped.variances.min()) >= 1e-3 * (1 - 1e-6)
    refit = fit_digits_gmm(size=16, components=8, seed=0)
    assert_close(refit.weights, shipped.weights, rtol=0, atol=1e-5)
    assert_close(refit.means, shipped.means, rtol=0, atol=1e-5)
    assert_close(refit.variances, shipped.variances, rtol=0, atol=1e-5)


# --------------------------------------------------------------------------- bad input

W3 = np.array([0.2, 0.3, 0.5])
M3 = np.full((3, 1, 2, 2), 0.5)
V3 = np.full((3, 1, 2, 2), 0.1)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"weights": [0.2, 0.3, 0.4]}, r"weights sum to 0\.9, not 1"),
        ({"weights": [1.2, -0.2, 0.0]}, r"weights must be >= 0, got min -0\.2"),
        ({"variances": -V3}, r"variances must be > 0, got min -0\.1"),
        ({"variances": np.full((3, 1, 2, 3), 0.1)}, r"variances have shape \(3, 1, 2, 3\) but means have shape \(3, 1, 2, 2\)"),
        ({"weights": [0.5, 0.5]}, r"means have shape \(3, 1, 2, 2\) but weights have shape \(2,\)"),
        ({"means": np.full((3, 2, 2), 0.5)}, r"means have shape \(3, 2, 2\)"),
        ({"means": np.where(M3 > 0, np.nan, M3)}, r"means has 12 NaN/Inf"),
        ({"variances": None}, r"exactly one"),
        ({"variances": None, "covariance": np.eye(4)}, r"full prior covariance needs one component, got K = 3"),
    ],
)
def test_bad_mixture_parameters_raise_uqerror(kwargs: dict, message: str) -> None:
    args = {"weights": W3, "means": M3, "variances": V3} | kwargs
    with pytest.raises(UQError, match=message):
        GaussianMixturePrior(args.pop("weights"), args.pop("means"), args.pop("variances"), **args)


@pytest.mark.parametrize(
    ("covariance", "message"),
    [
        (np.diag([1.0, 1.0, -1.0, 1.0]), r"not positive definite \(smallest eigenvalue -1"),
        (np.eye(4) + np.triu(np.ones((4, 4)), 1), r"not symmetric"),
        (np.eye(3), r"covariance has shape \(3, 3\) but means have shape \(1, 1, 2, 2\); it must be \(4, 4\)"),
    ],
)
def test_bad_full_covariance_raises_uqerror(covariance: np.ndarray, message: str) -> None:
    with pytest.raises(UQError, match=message):
        GaussianMixturePrior.gaussian(np.zeros((1, 2, 2)), covariance=covariance)


def test_bad_files_and_specs_raise_uqerror(tmp_path: Path) -> None:
    save_npz(tmp_path / "nokey.npz", weights=W3, means=M3)
    with pytest.raises(UQError, match=r"nokey\.npz has no key 'variances'"):
        build_prior({"kind": "gmm", "file": "nokey.npz"}, root=tmp_path)
    with pytest.raises(UQError, match=r"not found: .*missing\.npz"):
        build_prior({"kind": "gmm", "file": "missing.npz"}, root=tmp_path)
    np.save(tmp_path / "single.npy", np.zeros(3))
    with pytest.raises(UQError, match=r"single\.npy is a single array, not an \.npz archive"):
        build_prior({"kind": "gmm", "file": "single.npy"}, root=tmp_path)
    (tmp_path / "junk.npz").write_text("not an archive")
    with pytest.raises(UQError, match=r"cannot read prior file .*junk\.npz"):
        build_prior({"kind": "gmm", "file": "junk.npz"}, root=tmp_path)
    save_npz(tmp_path / "badw.npz", weights=np.array([0.5, 0.6, 0.1]), means=M3, variances=V3)
    with pytest.raises(UQError, match=r"weights sum to 1\.2"):
        build_prior({"kind": "gmm", "file": "badw.npz"}, root=tmp_path)
    with pytest.raises(UQError, match=r"unknown prior kind 'vae'; choose one of gaussian, gmm"):
        build_prior({"kind": "vae"})
    with pytest.raises(UQError, match=r"unknown key 'colour' in the gmm prior spec"):
        build_prior({"kind": "gmm", "file": "badw.npz", "colour": 1}, root=tmp_path)
    with pytest.raises(UQError, match=r"missing variance"):
        build_prior({"kind": "gaussian", "shape": [1, 2, 2], "mean": 0.5})
    with pytest.raises(UQError, match=r"both a file and shape"):
        build_prior({"kind": "gaussian", "file": "g.npz", "shape": [1, 2, 2]}, root=tmp_path)
    with pytest.raises(UQError, match=r"variance has shape \(3,\), not broadcastable to shape \[1, 2, 2\]"):
        build_prior({"kind": "gaussian", "shape": [1, 2, 2], "mean": 0.5, "variance": [0.1, 0.2, 0.3]})
    save_npz(tmp_path / "both.npz", mean=np.zeros((1, 2, 2)), variance=np.ones((1, 2, 2)), covariance=np.eye(4))
    with pytest.raises(UQError, match=r"exactly one of 'variance'"):
        build_prior({"kind": "gaussian", "file": "both.npz"}, root=tmp_path)


def test_bad_denoiser_calls_raise_uqerror() -> None:
    prior = random_gmm(2, (1, 2, 2), seed=21)
    x = torch.zeros(3, 1, 2, 2, dtype=F64)
    with pytest.raises(UQError, match=r"timestep t = 1000 is outside \[0, 1000\)"):
        prior.denoise(x, 1000)
    with pytest.raises(UQError, match=r"integer tensor"):
        prior.denoise(x, torch.tensor([0.5, 0.5, 0.5]))
    with pytest.raises(UQError, match=r"t has shape \(2,\) but x_t has 3 chains"):
        prior.denoise(x, torch.tensor([1, 2]))
    with pytest.raises(UQError, match=r"x_t must be a float tensor of shape \(B, \*\(1, 2, 2\)\)"):
        prior.denoise(torch.zeros(3, 1, 2, 3, dtype=F64), 10)
    with pytest.raises(UQError, match=r"float dtype"):
        prior.to(dtype=torch.int64)
