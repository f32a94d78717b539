"""Errors of the bus layer.

BusError
├── NoWorkerError        no worker listens for this model (NATS "no responders")
├── WorkerLostError      the worker running a job went away mid-stream
└── ReplyTimeoutError    nothing came back within the deadline
"""

from __future__ import annotations


class BusError(Exception):
    """Something went wrong moving a job or its reply over NATS."""


class NoWorkerError(BusError):
    pass


class WorkerLostError(BusError):
    pass


class ReplyTimeoutError(BusError):
    pass
