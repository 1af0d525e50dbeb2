"""Who may call and what they signed: client authentication, TLS, WS-Security, replay, PKI."""
