"""Sequential Monte Carlo over the reverse diffusion: ``tds`` (twisted diffusion sampler) and ``smc-anneal``.

BlackJAX's shape (``blackjax/smc``): pure functions of a generator and the weights
(:mod:`.resampling`), a state of particles and log-weights and an info per step whose
log-likelihood increments sum to the log-evidence (:mod:`.base`), the Gaussian twist shared by
both kernels (:mod:`.twist`), one module per algorithm (:mod:`.tds`, :mod:`.anneal`), and the
sampler protocol around them (:mod:`.sampler`). Particles of ``R`` independent runs of ``N``
particles are one batch ``(R·N, C, H, W)``; weights are ``(R, N)``.
"""
