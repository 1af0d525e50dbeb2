"""The bmrgw gateway: HTTP server, SOAP relay, health and metrics."""
