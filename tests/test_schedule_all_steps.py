"""Every step count the SD and DiT schedulers accept gives a schedule or a clear refusal (issue 10, item 1).

Coefficients only for all T = 1..1000 (fast); ``scheduler.step`` itself is compared on a sample of T.
"""

import pytest
import torch
from diffusers import DDIMScheduler

from paratAA import Schedule, ScheduleError
from paratAA.pipelines.defaults import DIT_DDIM, DIT_SCHEDULER_CONFIG
from paratAA.pipelines.tiny import SD_SCHEDULER_CONFIG

CONFIGS = {
    # SD 1.5: leading spacing with steps_offset=1, as SDAdapter builds it.
    "sd": (SD_SCHEDULER_CONFIG, dict(clip_sample=False)),
    # DiT: linspace spacing, final alpha 1, as DiTAdapter builds it.
    "dit": (DIT_SCHEDULER_CONFIG, DIT_DDIM),
}


@pytest.mark.parametrize("name", CONFIGS)
def test_every_step_count_builds_or_is_refused(name):
    config, overrides = CONFIGS[name]
    scheduler = DDIMScheduler.from_config(config, **overrides)
    train_steps = scheduler.config.num_train_timesteps
    refused = []
    for steps in range(1, train_steps + 1):
        scheduler.set_timesteps(steps)
        try:
            schedule = Schedule.from_scheduler(scheduler, eta=1.0, verify=False)
        except ScheduleError as error:
            refused.append(steps)
            assert "fewer steps" in str(error) and int(scheduler.timesteps.max()) >= train_steps
            continue
        assert schedule.num_steps == steps
        assert 0 <= int(schedule.timesteps[0]) and int(schedule.timesteps[-1]) < train_steps
        assert bool(torch.all(schedule.timesteps[1:] > schedule.timesteps[:-1]))
        for values in (schedule.a, schedule.b, schedule.c, schedule.sigma):
            assert bool(torch.isfinite(values).all())
        assert bool((schedule.sigma >= 0).all()) and torch.equal(schedule.c, schedule.sigma)
    # SD's leading spacing reaches timestep 1000 at T = 1000, where diffusers' own step() fails too.
    assert refused == ([train_steps] if name == "sd" else [])


@pytest.mark.parametrize("name", CONFIGS)
@pytest.mark.parametrize("steps", [1, 2, 3, 7, 333, 999])
def test_sampled_step_counts_reproduce_step(name, steps):
    config, overrides = CONFIGS[name]
    scheduler = DDIMScheduler.from_config(config, **overrides)
    scheduler.set_timesteps(steps)
    Schedule.from_scheduler(scheduler, eta=0.5)  # verify=True: compared with scheduler.step at every step
