"""`loopsim serve`: the long-running worker and what it exposes.

One module per noun: ``worker`` (the Service that claims and steps runs), ``metrics``
(Prometheus), ``webhook`` (check-in notifications), ``http`` (``/metrics`` and
``/healthz``) and ``logs`` (text or JSON log lines).
"""
