"""Models with discrete latent variables for variational inference (the ``discrete_vi``
benchmark, ``bench/discrete_vi.py``).

- :mod:`models.discrete_vi.sbn`: a sigmoid belief network (discrete VAE) on binarized 8x8
  digits: Bernoulli latent units, a linear Bernoulli decoder and a linear Bernoulli encoder.
- :mod:`models.discrete_vi.gmm`: a Gaussian mixture on 2-D points with one Categorical
  assignment per point; assignments sampled (guide with per-point logits) or enumerated.
- :mod:`models.discrete_vi.air` (when present): an attend-infer-repeat-like model.

Submodules are imported on first use (``import models.discrete_vi.sbn``); this package
imports nothing itself.
"""
