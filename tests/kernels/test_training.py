"""``train_prior``: a few steps write a loadable folder; an interrupted run resumes bit for bit."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from uqcampaign.kernels.errors import UQError
from uqcampaign.kernels.priors.registry import build_prior
from uqcampaign.kernels.training import loop, train_prior
from uqcampaign.kernels.training.datasets import digits16, get_dataset, gmm8_prior

FAST = {"dataset": "gmm8", "batch_size": 4, "checkpoint_every": 2, "progress": False}


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "unet" / "diffusion_pytorch_model.safetensors"))


def test_datasets_are_fixed_and_in_range() -> None:
    images, labels = digits16("train")
    held_out, _ = digits16("test")
    assert images.shape == (1500, 1, 16, 16) and held_out.shape == (297, 1, 16, 16)
    assert float(images.min()) >= 0.0 and float(images.max()) <= 1.0 and set(labels.tolist()) == set(range(10))
    a, _ = get_dataset("gmm8").sample(6, torch.Generator().manual_seed(3))
    b, _ = get_dataset("gmm8").sample(6, torch.Generator().manual_seed(3))
    assert a.shape == (6, 1, 8, 8) and torch.equal(a, b)
    prior = gmm8_prior()
    assert prior.weights.shape == (5,) and prior.img_shape == (1, 8, 8)
    with pytest.raises(UQError):
        get_dataset("cifar")


def test_interrupted_training_resumes_bit_identically(tmp_path: Path, monkeypatch) -> None:
    straight = train_prior("diffusion", tmp_path / "straight", steps=4, **FAST)
    prior = build_prior({"kind": "diffusion", "path": str(straight)})
    assert prior.img_shape == (1, 8, 8)
    record = json.loads((straight / "training.json").read_text())
    assert record["command"].startswith("uqc train-prior diffusion") and record["options"]["steps"] == 4

    real_save = loop._save
    calls = {"n": 0}

    def crash_after_first_checkpoint(*args, **kwargs):
        real_save(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 1:
            raise KeyboardInterrupt  # the run dies right after writing the step-2 checkpoint

    monkeypatch.setattr(loop, "_save", crash_after_first_checkpoint)
    with pytest.raises(KeyboardInterrupt):
        train_prior("diffusion", tmp_path / "resumed", steps=4, **FAST)
    monkeypatch.setattr(loop, "_save", real_save)
    assert json.loads((tmp_path / "resumed" / "checkpoint" / "state.json").read_text())["step"] == 2
    with pytest.raises(UQError, match="not empty"):
        train_prior("diffusion", tmp_path / "resumed", steps=4, **FAST)
    with pytest.raises(UQError, match="other settings"):
        train_prior("diffusion", tmp_path / "resumed", steps=4, resume=True, **{**FAST, "batch_size": 5})
    train_prior("diffusion", tmp_path / "resumed", steps=4, resume=True, **FAST)
    a, b = weights(straight), weights(tmp_path / "resumed")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_bad_training_requests_are_one_line(tmp_path: Path) -> None:
    for kwargs, match in [({"kind": "gan"}, "trainable kinds"), ({"device": "cuda:7"} if not torch.cuda.is_available() else {"device": "nope"}, "device"),
                          ({"steps": 0}, "steps"), ({"resume": True}, "no checkpoint")]:
        args = {"kind": "diffusion", "out": tmp_path / "x", **FAST, **kwargs}
        with pytest.raises(UQError, match=match) as info:
            train_prior(args.pop("kind"), args.pop("out"), **args)
        assert "\n" not in str(info.value)


LDM = Path(__file__).resolve().parents[2] / "priors" / "digits16-ldm"


@pytest.mark.skipif(not LDM.is_dir(), reason="priors/digits16-ldm not shipped")
def test_latent_consistency_distillation_writes_a_guided_lcm(tmp_path: Path) -> None:
    """Two distillation steps from the shipped latent ε-model: the student is the teacher's UNet plus a
    guidance embedding, it moved away from the teacher, and the folder loads as a latent-consistency prior."""
    out = train_prior("latent-consistency", tmp_path / "lcm", dataset="digits16", teacher=str(LDM), steps=2,
                      batch_size=4, lr=1e-3, checkpoint_every=1, progress=False)
    student = build_prior({"kind": "latent-consistency", "path": str(out)})
    teacher = build_prior({"kind": "latent-consistency", "path": str(LDM)})
    assert student.unet.config.time_cond_proj_dim == 32 and teacher.unet.config.time_cond_proj_dim is None
    s, t = student.unet.state_dict(), teacher.unet.state_dict()
    assert set(s) - set(t) == {"time_embedding.cond_proj.weight"}
    assert any(not torch.equal(s[k], t[k]) for k in t)
    vae_s, vae_t = student.vae.state_dict(), teacher.vae.state_dict()
    assert all(torch.equal(vae_s[k], vae_t[k]) for k in vae_t)  # the codec is the teacher's, frozen
    z = torch.randn(3, *student.latent_shape, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(student.consistency(z, 999)).all()
    assert json.loads((out / "training.json").read_text())["options"]["teacher"] == str(LDM)

    for kwargs, match in [({"teacher": str(out)}, "plain ε-prediction"), ({"teacher": str(tmp_path / "none")}, "none"),
                          ({"teacher": str(LDM), "dataset": "gmm8"}, "digits16")]:
        with pytest.raises(UQError, match=match) as info:
            train_prior("latent-consistency", tmp_path / "bad", steps=1, progress=False, **{"dataset": "digits16", **kwargs})
        assert "\n" not in str(info.value)


def test_options_of_another_recipe_are_refused(tmp_path: Path) -> None:
    for kind, options, match in [("diffusion", {"teacher": "x"}, "its options: none"),
                                 ("consistency", {"vae_steps": 3}, "teacher, grid"),
                                 ("latent-consistency", {"teacher": "x", "vae_steps": 3}, "from a teacher")]:
        with pytest.raises(UQError, match=match) as info:
            train_prior(kind, tmp_path / "x", steps=1, progress=False, **options)
        assert "\n" not in str(info.value) and not (tmp_path / "x").exists()
