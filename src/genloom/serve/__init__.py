"""``genloom serve``: HTTP model server with dynamic batching, supervised worker processes and backpressure.

Modules by concern: ``config`` (settings), ``batcher`` (dynamic batching, bounded queue), ``workers`` and
``supervisor`` (worker processes, restart, retry, hot reload), ``worker_main`` / ``lm_worker`` (inside the
worker), ``service`` (per-model state), ``app`` / ``api`` / ``edge`` / ``streaming`` (HTTP), ``metrics``,
``logs``, ``tracing``, ``openapi``, ``cli``.
"""
