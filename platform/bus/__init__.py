"""Ember's message bus: the wire contract, subjects and NATS plumbing shared by the gateway and workers."""
