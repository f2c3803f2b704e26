"""What runs on a model: samplers, the ``infer`` entry point, and ArviZ output.

Example:
    >>> import jax, numpyro, numpyro.distributions as dist, inference
    >>> def model(y=None):
    ...     mu = numpyro.sample("mu", dist.Normal(0.0, 10.0))
    ...     numpyro.sample("y", dist.Normal(mu, 1.0), obs=y)
    >>> r = inference.infer(model, y=1.0, method=inference.NUTS(), num_samples=200,
    ...                     num_warmup=200, num_chains=2, progress=False)
    >>> sorted(r.samples)
    ['mu']
"""

from inference.programs import disk_cache

disk_cache.configure()  # JAX's persistent compilation cache, unless the user chose otherwise

import importlib
import sys
from typing import Any

from inference import sharding
from inference.mcmc import combinators as kernels  # the public name of the combinators
from inference.mcmc import langevin
from inference.vi import guides
from inference.arviz_data import from_groups
from inference.mcmc.gibbs import DiscreteMH, Enumerate, Gibbs, gibbs
from inference.mcmc.combinators import compose, cycle, mixture
from inference.vi.fit import FitResult, NonFiniteError, fit
from inference.infer import infer
from inference.method import ChainMethod, Method, Request, all_methods
from inference.mcmc.langevin import mala, obabo, randomized_midpoint, sghmc, sgld, ula, underdamped
from inference.methods.langevin import MALA, SGHMC, SGLD, ULA, RandomizedMidpoint, Underdamped
from inference.initialization import initial_positions
from inference.methods.nuts import NUTS
from inference.result import Result, load_result
# eager, like infer: the function must win over the submodule of the same name
from inference.sbc import SBCResult, sbc
from inference.smc import SMC, SMCResult, tempered_smc
from inference.vi import VI

# Imported on first use (PEP 562): flows, learned samplers, flow matching and score
# samplers pull in flowjax and large programs that most runs never touch.
_LAZY_MODULES = ("flows", "flow_matching", "learned", "metrics", "neutra", "score")
_LAZY_NAMES = {"NeuTra": "methods.neutra", "Learned": "learned", "irmh": "learned"}

_MOVED = {"neutra": "methods.neutra"}

# Issue 13 moved these modules into family subpackages. Their old import paths stay
# aliases of the same module objects for one release (``import inference.nuts``,
# ``from inference.fit import NonFiniteError``, ``monkeypatch("inference.compilation.X")``);
# ``inference/neutra.py`` is a file alias because NeuTra loads lazily.
_OLD_PATHS = {
    "nuts": "methods.nuts", "langevin_methods": "methods.langevin", "langevin": "mcmc.langevin",
    "warmup_checks": "methods.warmup_checks", "adaptation": "mcmc.adaptation",
    "kernels": "mcmc.combinators", "gibbs": "mcmc.gibbs", "gibbs_model": "mcmc.gibbs_model",
    "gibbs_discrete": "mcmc.gibbs_discrete", "gibbs_tuning": "mcmc.gibbs_tuning",
    "smc_checks": "smc.checks", "fit": "vi.fit", "guides": "vi.guides",
    "compilation": "programs.cache", "fingerprint": "programs.fingerprint",
    "disk_cache": "programs.disk_cache", "program_store": "programs.store",
}
for _old, _new in _OLD_PATHS.items():
    sys.modules.setdefault(f"inference.{_old}", importlib.import_module(f"inference.{_new}"))


def __getattr__(name: str) -> Any:
    if name in _LAZY_MODULES:
        return importlib.import_module(f"inference.{_MOVED.get(name, name)}")
    if name in _LAZY_NAMES:
        return getattr(importlib.import_module(f"inference.{_LAZY_NAMES[name]}"), name)
    if name == "METHODS":
        # The method classes shipped with the library (``all_methods()`` also finds yours).
        return (NUTS, MALA, ULA, Underdamped, RandomizedMidpoint, SGLD, SGHMC, SMC, Gibbs,
                __getattr__("NeuTra"), VI, __getattr__("Learned"))
    raise AttributeError(f"module 'inference' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))

__all__ = [
    "infer",
    "sbc",
    "SBCResult",
    "disk_cache",
    "Result",
    "load_result",
    "NUTS",
    "MALA",
    "ULA",
    "Underdamped",
    "RandomizedMidpoint",
    "SGLD",
    "SGHMC",
    "SMC",
    "NeuTra",
    "Learned",
    "learned",
    "irmh",
    "sharding",
    "flows",
    "flow_matching",
    "metrics",
    "score",
    "Gibbs",
    "gibbs",
    "Enumerate",
    "DiscreteMH",
    "kernels",
    "langevin",
    "ula",
    "mala",
    "underdamped",
    "obabo",
    "randomized_midpoint",
    "sgld",
    "sghmc",
    "compose",
    "cycle",
    "mixture",
    "SMCResult",
    "tempered_smc",
    "VI",
    "METHODS",
    "Method",
    "ChainMethod",
    "Request",
    "all_methods",
    "fit",
    "FitResult",
    "NonFiniteError",
    "guides",
    "initial_positions",
    "from_groups",
]
