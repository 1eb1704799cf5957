"""``genloom serve``: HTTP model server with dynamic batching, supervised worker processes and backpressure.

Usage::

    genloom serve vae=runs/vae/model.safetensors lm=runs/lm/model.safetensors [--host 127.0.0.1] [--port 8000]
        [--config serve.toml] [--max-batch-size 64] [--max-wait-ms 2] [--max-queue 256] [--max-n 256]
        [--timeout 30] [--threads 1] [--max-body-bytes 1048576] [--no-access-log]

HTTP API (docs/architecture.md, "Interfaces"):

- ``GET /v1/models`` — name, kind, config, provenance, readiness and limits of every model.
- ``POST /v1/models/{name}/sample`` (VAE, GAN) ``{"n", "seed", "labels", "format": png|npy|json}``;
  the same seed gives the same images as ``genloom.engine.load(path).sample(n, seed=seed)``.
- ``POST /v1/models/{name}/generate`` (LM) ``{"prompt", "max_new_tokens", "temperature", "top_k", "top_p",
  "seed", "stop", "stream"}``; ``stream: true`` answers ``text/event-stream``: ``event: token`` per token
  (``data: {"text": ...}``), then ``event: done`` (``{"tokens", "ttft_ms", "seconds"}``) or ``event: error``.
- ``POST /v1/models/{name}/reconstruct`` (VAE) ``{"images": (n, 28, 28) in [0, 1], "labels", "format"}``.
- ``POST /v1/models/{name}/interpolate`` (VAE) ``{"a": seed | latent, "b": seed | latent, "steps", "label",
  "format"}`` — slerp between two latent codes.
- ``POST /admin/models/{name}/reload`` with ``Authorization: Bearer $GENLOOM_ADMIN_TOKEN`` and optional
  ``{"path": ...}`` — loads the file in a new worker, swaps it in atomically, retires the old worker after its
  in-flight work; a file that does not load is refused (422) and the old model keeps serving. Without the env
  variable (or ``admin_token_env`` in the TOML) the admin endpoints answer 403.
- ``POST /v1/completions`` and ``POST /v1/chat/completions`` (LM): OpenAI-compatible, streaming or not
  (``openai.py``; fields and the chat template in ``openai_schema.py``); ``GET /v1/models`` answers in OpenAI's
  list format (``object``, ``data``: ``id``, ``object``, ``created``, ``owned_by`` plus the fields above) and
  keeps genloom's ``models`` list.
- ``GET /healthz`` (process up), ``/readyz`` (200 only when every worker is ready; per-model state, pid,
  restarts, queue depth), ``/metrics`` (Prometheus), ``/docs`` and ``/openapi.json``.

Headers: ``X-Request-Timeout: SECONDS`` sets the request's deadline (default ``timeout_s``, 30 s; for an SSE
stream it bounds the first token, then each next token must follow within ``timeout_s``); ``X-Request-Id``
is echoed (or one is made) and appears in the JSON access log and the traces.
Errors are JSON ``{"error": message, "field": name | null}``: 404 unknown model, 413 body too large, 422 invalid
input (``field`` names it), 503 overloaded or restarting (``Retry-After``; overload answers 429 instead with
``overload_status = 429`` / ``--overload-status 429``), 504 deadline passed, 499 in the
logs/metrics for a client that hung up (its queued work is dropped, its decode slot freed).

Behaviour: each model runs in its own worker process (forked from a forkserver that has imported torch once);
a batcher per image model collects up to ``max_batch_size`` images or ``max_wait_ms`` after the first request
into one forward pass; the LM worker runs continuous batching (requests join and leave between decode steps).
Queues are bounded (``max_queue``); a request that cannot finish before its deadline is refused at once with
503. A worker killed or crashed is restarted with exponential backoff, and its in-flight batch is retried once
on the new worker (a second failure is a 503, never a hang). SIGTERM/SIGINT drain in-flight requests, stop the
workers and exit 0. Logs are JSON lines on stderr. OpenTelemetry spans (``genloom.queue_wait``,
``genloom.batch``, ``genloom.inference``) are recorded when ``genloom[otel]`` is installed and configured.

The transport-neutral pieces live in ``genloom.core`` (request schema and validation, the batcher, run_batch,
the process model). Modules here by concern: ``config`` (settings), ``workers`` and
``supervisor`` (worker processes, restart, retry, hot reload), ``worker_main`` / ``lm_worker`` (inside the
worker), ``ipc`` (pickle-free messages), ``service`` (per-model state), ``app`` / ``api`` / ``edge`` /
``streaming`` / ``encode`` / ``openapi`` (HTTP), ``metrics``, ``logs``, ``tracing``, ``cli``.
New pages (the playground) are added through ``app.EXTRA_ROUTES``.
"""
