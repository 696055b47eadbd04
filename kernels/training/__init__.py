"""Training small learned priors (``uqc train-prior``): datasets, tiny configs, a resumable loop."""

from uqcampaign.kernels.training.train import TRAINABLE_KINDS, train_prior

__all__ = ["TRAINABLE_KINDS", "train_prior"]
