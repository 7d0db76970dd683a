"""Float64 step coefficients of an affine diffusion sampler, read from a diffusers scheduler.

The index convention and the ``Schedule`` itself: ``paratAA.schedule.core``; one module per family
of schedulers (``ddim``, ``sigma``, ``multistep``), which ``Schedule.from_scheduler`` dispatches to.
"""

from paratAA.errors import ScheduleError
from paratAA.schedule.core import Schedule

__all__ = ["Schedule", "ScheduleError"]
