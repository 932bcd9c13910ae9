"""Human check-ins: schedule and alarms, opening, the decision, and drift (pure)."""
