"""The Prometheus metrics one service exposes on ``/metrics``.

Each :class:`Metrics` holds a registry of its own, so two services in one process (as in
the tests) never share a counter. Every labelled series is created at zero up front, so a
scrape shows it before the first event.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import generate_latest

from loopsim.schemas import CallRole, DayStatus

# The roles of the calls a day makes (a probe's prediction is made when a check-in opens).
DAY_ROLES = [role.value for role in CallRole if role != CallRole.PROBE]


class Metrics:
    """Prometheus metrics of one service, in a registry of its own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.days = Counter("loopsim_days", "Days written, by status.", ["status"], registry=r)
        self.day_seconds = Histogram(
            "loopsim_day_seconds",
            "Wall time of one day, from planning to commit.",
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600),
            registry=r,
        )
        self.retries = Counter(
            "loopsim_model_retries", "Model calls retried after an endpoint fault.", registry=r
        )
        self.tokens = Counter(
            "loopsim_tokens", "Model tokens, in and out.", ["direction"], registry=r
        )
        self.calls = Counter(
            "loopsim_model_calls",
            "Model calls of the days written, by role, and whether the reply was used.",
            ["role", "outcome"],
            registry=r,
        )
        self.leases = Gauge("loopsim_leases_held", "Runs this worker holds a lease on.", registry=r)
        self.leases_lost = Counter("loopsim_leases_lost", "Leases found lost.", registry=r)
        self.checkins_pending = Gauge(
            "loopsim_checkins_pending", "Check-ins waiting for a human (all runs).", registry=r
        )
        self.checkins_opened = Counter(
            "loopsim_checkins_opened", "Check-ins this worker opened.", registry=r
        )
        self.runs_failed = Counter(
            "loopsim_runs_failed", "Runs marked failed after failed days in a row.", registry=r
        )
        self.webhooks = Counter(
            "loopsim_webhooks", "Webhook deliveries, by outcome.", ["outcome"], registry=r
        )
        for status in (DayStatus.COMMITTED, DayStatus.FAILED):
            self.days.labels(status=status)
        for direction in ("in", "out"):
            self.tokens.labels(direction=direction)
        for role in DAY_ROLES:
            for outcome in ("accepted", "rejected"):
                self.calls.labels(role=role, outcome=outcome)
        for outcome in ("sent", "failed"):
            self.webhooks.labels(outcome=outcome)

    def render(self) -> bytes:
        return generate_latest(self.registry)
