"""The one-argument methods ``infer`` runs that are not a family of their own.

Each is a :class:`inference.method.Method`: ``nuts`` (NUTS with Stan's warmup),
``langevin`` (ULA, MALA, Underdamped, RandomizedMidpoint, SGLD, SGHMC as methods),
``neutra`` (NeuTra). The other methods live with their family: ``inference.vi.VI``,
``inference.smc.SMC``, ``inference.mcmc.gibbs.Gibbs``, ``inference.learned.Learned``.
"""
