"""The durable RabbitMQ pipeline: ``genloom worker`` (consume, batch, reply, ack) and ``genloom submit``.

Wire format in ``messages.py``; the async client in ``client.py``; the consumer in ``worker.py`` (its models in
``runner.py``, how a delivery ends — reply, retry, dead letter, ack — in ``outcomes.py``); process supervision in
``supervisor.py``; operators' views in ``status.py`` and ``admin.py``.
"""

DEFAULT_URL = "amqp://guest:guest@127.0.0.1:5672/"  # the broker the CLI, tests and benchmarks use by default
