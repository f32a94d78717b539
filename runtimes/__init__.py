"""Model runtimes, one per modality; each is a NATS worker (worker / engine / model / loader)."""
