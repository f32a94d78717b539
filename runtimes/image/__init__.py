"""The image runtime: diffusers pipelines behind a dynamically batching engine."""
