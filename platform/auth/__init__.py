"""API keys: issuing, storing (only as SHA-256 hashes, in NATS JetStream key/value) and checking them."""
