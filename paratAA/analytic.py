"""Denoisers with exact, closed-form predictions: realistic offline test and benchmark problems.

Data ``x0 ~ sum_k w_k N(mu_k, s_k^2 I)`` (a Gaussian mixture; one component is a Gaussian) noised
as ``x_t = sqrt(abar) x0 + sqrt(1 - abar) eps`` has marginal
``sum_k w_k N(sqrt(abar) mu_k, v_k I)`` with ``v_k = abar s_k^2 + 1 - abar`` and the exact
(minimum mean squared error) noise prediction

    eps(x_t) = sqrt(1 - abar) * sum_k r_k(x_t) (x_t - sqrt(abar) mu_k) / v_k,

with ``r_k`` the posterior responsibilities. That is what a perfectly trained epsilon-network
outputs; ``eps_fn`` converts it to the schedule's prediction type.

Under rectified flow (flow matching as SD3 and Flux train it), ``x_t = (1 - t) x0 + t n`` with
``n ~ N(0, I)``; given component k, ``x_t ~ N((1 - t) mu_k, V_k I)`` with
``V_k = (1 - t)^2 s_k^2 + t^2``, and the exact velocity ``E[n - x0 | x_t]`` is

    v(x_t) = sum_k r_k(x_t) [ (t - (1 - t) s_k^2) (x_t - (1 - t) mu_k) / V_k - mu_k ],

finite at ``t = 1`` (pure noise) and ``t = 0``. ``eps_fn`` of a flow-matching schedule returns it
at ``t = schedule.scheduler_sigmas[i]``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from paratAA.schedule import Schedule

__all__ = ["GaussianMixture", "gaussian_mixture_problem"]


@dataclass(frozen=True)
class GaussianMixture:
    """Isotropic Gaussian mixture data with exact denoisers.

    Attributes:
        means: ``(K, *latent)`` component means.
        stds: ``(K,)`` component standard deviations (> 0).
        weights: ``(K,)`` mixture weights (normalised on use).
    """

    means: torch.Tensor
    stds: torch.Tensor
    weights: torch.Tensor

    def eps(self, x: torch.Tensor, alpha_bar: torch.Tensor) -> torch.Tensor:
        """Exact noise prediction.

        Args:
            x: ``(n, *latent)`` noisy latents.
            alpha_bar: ``(n,)`` alphas_cumprod of each row's timestep.

        Returns:
            float64 ``(n, *latent)``.
        """
        dtype, device = torch.float64, x.device
        x = x.to(dtype).flatten(1)  # (n, d)
        means = self.means.to(device, dtype).flatten(1)  # (K, d)
        abar = alpha_bar.to(device, dtype)[:, None]  # (n, 1)
        variance = abar * self.stds.to(device, dtype)[None, :] ** 2 + 1 - abar  # (n, K)
        centred = x[:, None, :] - abar.sqrt()[:, :, None] * means[None]  # (n, K, d)
        dims = x.shape[1]
        log_density = (-0.5 * centred.pow(2).sum(-1) / variance - 0.5 * dims * variance.log()
                       + self.weights.to(device, dtype).log()[None, :])
        responsibility = torch.softmax(log_density, dim=1)  # (n, K)
        eps = (1 - abar).sqrt() * torch.einsum("nk,nkd->nd", responsibility / variance, centred)
        return eps.view(-1, *self.means.shape[1:])

    def velocity(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Exact rectified-flow velocity ``E[noise - x0 | x_t]`` (module docstring).

        Args:
            x: ``(n, *latent)`` latents ``x_t = (1 - t) x0 + t noise``.
            t: ``(n,)`` noise levels in ``[0, 1]`` (a flow-matching scheduler's sigmas).

        Returns:
            float64 ``(n, *latent)``.
        """
        dtype, device = torch.float64, x.device
        x = x.to(dtype).flatten(1)  # (n, d)
        means = self.means.to(device, dtype).flatten(1)  # (K, d)
        t = t.to(device, dtype)[:, None]  # (n, 1)
        var0 = self.stds.to(device, dtype)[None, :] ** 2  # (1, K)
        variance = (1 - t) ** 2 * var0 + t**2  # (n, K)
        centred = x[:, None, :] - (1 - t)[:, :, None] * means[None]  # (n, K, d)
        log_density = (-0.5 * centred.pow(2).sum(-1) / variance - 0.5 * x.shape[1] * variance.log()
                       + self.weights.to(device, dtype).log()[None, :])
        responsibility = torch.softmax(log_density, dim=1)  # (n, K)
        gain = (t - (1 - t) * var0) / variance  # (n, K)
        per_component = gain[:, :, None] * centred - means[None]  # (n, K, d)
        velocity = torch.einsum("nk,nkd->nd", responsibility, per_component)
        return velocity.view(-1, *self.means.shape[1:])

    def sample(self, num: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Draw ``num`` data points ``x0`` (float64, on the CPU)."""
        component = torch.multinomial(self.weights.double(), num, replacement=True, generator=generator)
        noise = torch.randn((num, *self.means.shape[1:]), generator=generator, dtype=torch.float64)
        stds = self.stds.double()[component].view(-1, *([1] * (self.means.dim() - 1)))
        return self.means.double()[component] + stds * noise

    def eps_fn(self, schedule: Schedule):
        """``eps_fn(x, steps, samples)`` for ``paratAA.solve``, in the schedule's prediction type.

        Flow matching (``flow_prediction``): the velocity at ``t = scheduler_sigmas[i]``. A schedule
        with an ``input_scale`` (Euler) sees the scaled latent, as its network would.
        """
        abar_per_step = schedule.alphas_cumprod
        if schedule.prediction_type == "flow_prediction":
            levels = schedule.scheduler_sigmas

            def velocity_fn(x: torch.Tensor, steps: torch.Tensor, samples: torch.Tensor) -> torch.Tensor:
                return self.velocity(x, levels.to(x.device)[steps])

            return velocity_fn
        input_scale = schedule.input_scale

        def eps_fn(x: torch.Tensor, steps: torch.Tensor, samples: torch.Tensor) -> torch.Tensor:
            if input_scale is not None:
                x = x * input_scale.to(x.device)[steps].view(-1, *([1] * (x.dim() - 1)))
            abar = abar_per_step.to(x.device)[steps]
            eps = self.eps(x, abar)
            if schedule.prediction_type == "epsilon":
                return eps
            shape = (-1,) + (1,) * (x.dim() - 1)
            s, r = abar.sqrt().view(shape), (1 - abar).sqrt().view(shape)
            x0 = (x - r * eps) / s
            return x0 if schedule.prediction_type == "sample" else s * eps - r * x0

        return eps_fn


def gaussian_mixture_problem(latent_shape: tuple[int, ...] = (4, 32, 32), num_components: int = 8,
                             seed: int = 0, spread: float = 1.0, std: float = 0.25) -> GaussianMixture:
    """A reproducible mixture with unit-scale latents, a proxy for a trained latent-space model.

    Means are drawn ``N(0, spread^2)`` per entry, every component has std ``std`` and the weights
    are random (Dirichlet(1)), all from ``seed``.
    """
    generator = torch.Generator().manual_seed(seed)
    means = spread * torch.randn((num_components, *latent_shape), generator=generator, dtype=torch.float64)
    weights = -torch.rand(num_components, generator=generator, dtype=torch.float64).log()
    return GaussianMixture(means=means, stds=torch.full((num_components,), std, dtype=torch.float64),
                           weights=weights / weights.sum())
