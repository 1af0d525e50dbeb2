"""Capability (G): the send/receive log, its hash chains, the writer process and NTP time."""
