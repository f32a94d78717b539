"""Serverless tiers and rate limits shared by every gateway (GCRA on NATS JetStream key/value)."""
