"""Weight Evolution (Lin et al., ACM MM 2021) and the suite that reproduces its experiments."""

from we.core import WeightEvolution, evolve, selection_rate

__all__ = ["selection_rate", "evolve", "WeightEvolution"]
