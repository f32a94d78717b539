"""The subject scheme: one place that says who publishes and who listens where.

ember.v1.jobs.<modality>.<model>       jobs; the workers of one model share it as a queue group
ember.v1.worker.<worker_id>.jobs       jobs sent to one worker the gateway knows is alive (the usual route)
ember.v1.worker.<worker_id>.cancel     stop one job on the worker that runs it
ember.v1.worker.<worker_id>.ping       liveness
ember.v1.worker.<worker_id>.probe      where one job stands, and its lost replies sent again
ember.v1.workers.announce              WorkerInfo heartbeats, to every gateway
ember.v1.workers.discover              a gateway asking every worker to announce now
ember.v1.demand.<modality>.<model>     a gateway waiting for a worker of a model that has none (scale from zero)
ember.v1.metrics                       a gateway gathering every worker's metrics page (each one answers)
ember.v1.reply.<gateway_id>.<n>        a job's reply stream back to the gateway that sent it
"""

from __future__ import annotations

import re

PREFIX = "ember.v1"
WORKERS_ANNOUNCE = f"{PREFIX}.workers.announce"
WORKERS_DISCOVER = f"{PREFIX}.workers.discover"
# Every demand signal: what a scaler listens to.
DEMAND_ALL = f"{PREFIX}.demand.>"
# A gateway asks every worker for its metrics page here (each answers, with its id in WORKER_HEADER).
METRICS = f"{PREFIX}.metrics"
WORKER_HEADER = "Ember-Worker"

# NATS subject tokens may not contain '.', '*', '>' or whitespace; model ids like "org/name-1.5b" do.
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


def token(name: str) -> str:
    """Encode an arbitrary name as one NATS subject token, reversibly and readably."""
    return _UNSAFE.sub(lambda m: f"~{ord(m.group()):02x}", name)


def jobs(modality: str, model: str) -> str:
    return f"{PREFIX}.jobs.{modality}.{token(model)}"


def queue_group(modality: str, model: str) -> str:
    return f"ember-{modality}-{token(model)}"


def demand(modality: str, model: str) -> str:
    return f"{PREFIX}.demand.{modality}.{token(model)}"


def worker_jobs(worker_id: str) -> str:
    return f"{PREFIX}.worker.{token(worker_id)}.jobs"


def worker_probe(worker_id: str) -> str:
    return f"{PREFIX}.worker.{token(worker_id)}.probe"


def worker_cancel(worker_id: str) -> str:
    return f"{PREFIX}.worker.{token(worker_id)}.cancel"


def worker_ping(worker_id: str) -> str:
    return f"{PREFIX}.worker.{token(worker_id)}.ping"


def reply_prefix(gateway_id: str) -> str:
    return f"{PREFIX}.reply.{token(gateway_id)}"
