"""Security material: TLS certificates and contexts, password hashes."""
