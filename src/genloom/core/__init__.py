"""The inference core under genloom's four transports (CLI, Python ``genloom.engine``, HTTP ``genloom serve``,
AMQP ``genloom worker``). The transports are adapters: they decode their input into a request dict, call the
core, and encode the result.

- ``requests``: the one request schema and validator (limits, error text) every transport uses.
- ``runner``: ``run_batch(engine, requests)`` — one forward pass for a batch of validated requests.
- ``batcher``: the one dynamic batcher (bounded queue, max batch size, max wait, deadlines).
- ``supervision``: the one process model — a supervisor owns the processes that hold models; they exit
  within a second of its death (``PR_SET_PDEATHSIG`` plus a parent watch) and are restarted with backoff.
- ``names``: the one ``NAME=PATH`` rule of ``genloom serve`` and ``genloom worker``.
"""
