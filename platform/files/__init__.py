"""Files (``/v1/files``): uploads kept in JetStream for the Batch API and other uses."""
