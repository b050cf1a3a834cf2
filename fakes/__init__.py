"""Misbehaving upstreams for tests: small real HTTP servers on loopback, driven by a script."""
