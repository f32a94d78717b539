"""Usage metering: one record per finished request on a JetStream stream, and summaries of it."""
