"""The OpenAI-compatible HTTP gateway: it validates requests, sends jobs over the bus and streams replies."""
