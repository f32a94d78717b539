"""Errors of the bus layer.

BusError
├── NoWorkerError          no worker listens for this model (NATS "no responders")
├── WorkerLostError        the worker running a job went away mid-stream, or lost the job's replies
├── WorkerStalledError     the worker answers, but its engine has been stuck in one step past the stall limit
├── ReplyTimeoutError      nothing came back within the deadline
├── DeadlineExceededError  the job ran past its deadline
└── BusUnavailableError    this gateway has been cut off from NATS for longer than it waits for it
"""

from __future__ import annotations


class BusError(Exception):
    """Something went wrong moving a job or its reply over NATS."""


class NoWorkerError(BusError):
    pass


class WorkerLostError(BusError):
    pass


class WorkerStalledError(WorkerLostError):
    pass


class ReplyTimeoutError(BusError):
    pass


class DeadlineExceededError(BusError):
    pass


class BusUnavailableError(BusError):
    pass
