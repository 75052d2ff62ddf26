"""Generation in SVG feature space: flow-matching loss, ODE samplers, latent statistics, DiT training."""

from .flow import flow_matching_loss, shift_t
from .sampling import sample, time_grid

__all__ = ["flow_matching_loss", "shift_t", "sample", "time_grid"]
