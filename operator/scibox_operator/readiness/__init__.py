"""Readiness measured against the servers themselves: verdicts (pure), the HTTP probe, the prober."""
