"""`loopsim serve`: the long-running worker and what it exposes."""
