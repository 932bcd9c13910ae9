"""External time: the date a day's researcher believes it is.

The date depends only on the run's time policy, when the run began, the wall clock (for
``wall_clock``) and how many check-ins were approved (for ``per_checkin``). It never
depends on anything the model wrote.
"""

from __future__ import annotations

import datetime as dt

from loopsim.schemas import FixedTime, PerCheckinTime, WallClockTime

SECONDS_PER_DAY = 86_400


def external_date(
    policy: FixedTime | WallClockTime | PerCheckinTime,
    *,
    run_started: dt.datetime,
    now: dt.datetime,
    approved_checkins: int = 0,
) -> dt.date:
    if isinstance(policy, FixedTime):
        return policy.anchor
    if isinstance(policy, WallClockTime):
        elapsed = max(0.0, (now - run_started).total_seconds()) / SECONDS_PER_DAY
        return policy.anchor + dt.timedelta(days=int(elapsed * policy.rate))
    return policy.anchor + dt.timedelta(days=policy.step_days * approved_checkins)
