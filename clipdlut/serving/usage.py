"""Each client's use of the service, as Prometheus metrics at ``/metrics`` (``client`` label: the name in the clients
file, "" on a service open to all): jobs accepted and ended, image passes served, time waited for an optimizer.

An image pass is one photo seen once by CLIP in one view of one step (steps x views x photos for a whole job): the
GPU work a job was given, and what a client's share of the GPUs is counted in.
"""

from __future__ import annotations

import prometheus_client

ACCEPTED = prometheus_client.Counter("clipdlut_client_jobs_accepted", "jobs a client submitted that were accepted",
                                     ["client"])
ENDED = prometheus_client.Counter("clipdlut_client_jobs_ended", "a client's jobs that ended, by how (finished, "
                                  "cancelled, failed)", ["client", "status"])
PASSES = prometheus_client.Counter("clipdlut_client_image_passes", "image passes the optimizer served a client's "
                                   "jobs (steps x views x photos)", ["client"])
QUEUE_WAIT = prometheus_client.Histogram("clipdlut_client_queue_wait_seconds", "from a job's submission to an "
                                         "optimizer taking it", ["client"],
                                         buckets=(0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 900, 3600))


def accepted(client: str) -> None:
    ACCEPTED.labels(client).inc()


def ended(client: str, status: str) -> None:
    ENDED.labels(client, status).inc()


def served(client: str, passes: int) -> None:
    if passes > 0:
        PASSES.labels(client).inc(passes)


def waited(client: str, seconds: float) -> None:
    QUEUE_WAIT.labels(client).observe(max(0.0, seconds))
