"""The ``host`` scenario: the host in a process of its own, served as in production, and the load
(ordinary and hostile) from another.

Five processes:

- **the scenario process** (the harness's; :mod:`~harness.host_soak.rig`, with
  :mod:`~harness.host_soak.control` to start and drive the others): it drives the cycles,
  reads the host's channels over a control pipe, cuts Redis every ``outage_every`` cycles, has
  the webhook receiver killed for the last ``receiver_cycles`` of every ``receiver_every``,
  and runs the analysis;
- **the fault process** (:mod:`~harness.host_soak.fault_process`): a real redis-server
  behind a :class:`~harness.faults.FaultProxy`, and the webhook receiver's control (its pump
  threads, subprocesses and Redis reads stay out of the processes measured);
- **the host process** (:mod:`~harness.host_soak.host_process`): the app of
  ``waclient.host.create_app`` under ``uvicorn`` with ``waclient.host.http_guard.server_config``
  (what ``python -m waclient.host`` serves), the isolated transport with a simulated worker,
  and a control pipe; each cycle it disconnects the worker's session, waits for the client to
  reconnect and for ``requests_per_cycle`` more answers. It imports nothing of the harness
  (run with ``python -P``: neither the harness nor its own directory is on ``sys.path``): no
  numpy, scipy, matplotlib, memray;
- **the load process** (:mod:`~harness.host_soak.load_process`): an ordinary
  client (sends, schedules, cancels, lists, reads) from 127.0.0.1, and hostile traffic mixed
  in from other loopback addresses: slow connections holding unfinished headers, oversized
  headers, bad JSON and out-of-range dates, oversized bodies, wrong keys;
- **the webhook receiver** (:class:`~harness.webhook_receiver.ReceiverProcess`, a child of the
  fault process), the host's one configured endpoint (``WACLIENT_WEBHOOK_URLS``): it verifies
  every signature with ``standardwebhooks``; SIGKILLed, it leaves the host's dispatcher
  retrying and the backlog in Redis, drained when it is back.

The scenario's channels are the host process's (``host_*``, measured there after a
``gc.collect()``), its worker's RSS, and host + worker RSS; the harness's own channels are the
scenario process's. After the run every message the host accepted must be in Redis, once;
no answer may be a 5xx other than the documented 503s; every hostile request must be answered
4xx (or cut off); every job left in Redis (one-shots whose sends failed while the session
reconnected wait for their retry) must be one the ordinary client scheduled, and readable;
every event in the streams the dispatcher reads (``webhook-id`` ``<source>_<entry id>``) must
have reached the receiver with a valid signature (more than once only after a lost answer: at
least once), none dead-lettered.
"""

from harness.host_soak.rig import (
    ALLOWED_503,
    HOSTILE_ANSWERS,
    KEY,
    RECEIVER_CYCLES,
    RECEIVER_EVERY,
    host_rig,
    problems_of,
)

__all__ = [
    "ALLOWED_503", "HOSTILE_ANSWERS", "KEY", "RECEIVER_CYCLES", "RECEIVER_EVERY", "host_rig",
    "problems_of",
]  # fmt: skip
