"""The durable RabbitMQ pipeline: ``genloom worker`` (consume, batch, reply, ack) and ``genloom submit``.

Wire format in ``messages.py``; the async client in ``client.py``; the consumer in ``worker.py``; process
supervision in ``supervisor.py``.
"""
