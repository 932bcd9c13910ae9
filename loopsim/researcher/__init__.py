"""Everything a fresh researcher sees or says, blind to check-ins by where it stands:
nothing in this package imports loopsim.checkin, loopsim.loop, loopsim.service or
loopsim.cli (tests/test_layers.py holds it)."""
