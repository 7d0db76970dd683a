"""The analytic denoisers are exact: eps = -sqrt(1 - abar) * grad log p_t(x) of the noised data."""

import math

import pytest
import torch

from paratAA.analytic import GaussianMixture, gaussian_mixture_problem
from tests.test_solver import ddim_schedule


def noised_log_density(mixture: GaussianMixture, x: torch.Tensor, abar: float) -> torch.Tensor:
    """log p_t(x) of x_t = sqrt(abar) x0 + sqrt(1 - abar) eps, written out independently."""
    total = []
    dims = x[0].numel()
    for mean, std, weight in zip(mixture.means, mixture.stds, mixture.weights / mixture.weights.sum()):
        variance = abar * std**2 + 1 - abar
        centred = (x - math.sqrt(abar) * mean).flatten(1)
        total.append(torch.log(weight) - 0.5 * centred.pow(2).sum(1) / variance
                     - 0.5 * dims * torch.log(2 * math.pi * variance))
    return torch.logsumexp(torch.stack(total), 0)


@pytest.mark.parametrize("components", [1, 3])
@pytest.mark.parametrize("abar", [0.999, 0.5, 0.01])
def test_eps_is_the_scaled_score(components, abar):
    mixture = gaussian_mixture_problem((2, 3, 3), num_components=components, seed=components, std=0.4)
    x = torch.randn(5, 2, 3, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64).requires_grad_()
    score, = torch.autograd.grad(noised_log_density(mixture, x, abar).sum(), x)
    expected = -math.sqrt(1 - abar) * score
    got = mixture.eps(x.detach(), torch.full((5,), abar, dtype=torch.float64))
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-12)


def test_prediction_types_are_consistent_conversions():
    mixture = gaussian_mixture_problem((2, 3, 3), num_components=2, seed=0)
    x = torch.randn(4, 2, 3, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    steps = torch.tensor([0, 5, 10, 29])
    outputs = {p: mixture.eps_fn(ddim_schedule(prediction=p))(x, steps, torch.zeros(4, dtype=torch.long))
               for p in ("epsilon", "sample", "v_prediction")}
    abar = ddim_schedule().alphas_cumprod[steps].view(-1, 1, 1, 1)
    eps, x0, v = outputs["epsilon"], outputs["sample"], outputs["v_prediction"]
    torch.testing.assert_close(x0, (x - (1 - abar).sqrt() * eps) / abar.sqrt())
    torch.testing.assert_close(v, abar.sqrt() * eps - (1 - abar).sqrt() * x0)


def test_samples_follow_the_mixture():
    mixture = GaussianMixture(means=torch.tensor([[-3.0], [3.0]], dtype=torch.float64),
                              stds=torch.tensor([0.5, 0.5], dtype=torch.float64),
                              weights=torch.tensor([1.0, 3.0], dtype=torch.float64))
    draws = mixture.sample(20000, generator=torch.Generator().manual_seed(0))
    assert abs(float((draws > 0).double().mean()) - 0.75) < 0.02
    assert abs(float(draws[draws > 0].std()) - 0.5) < 0.02
