"""Batches (``/v1/batches``): files of requests run at the lowest priority, resumed after any crash."""
