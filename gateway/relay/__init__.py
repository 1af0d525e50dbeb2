"""Capabilities (A)-(C): the SOAP relay, its upstream seam, limits, breakers and failover."""
