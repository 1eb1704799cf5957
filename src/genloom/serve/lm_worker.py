"""Continuous batching inside an LM worker process.

One ``DecodeBatch`` (``models/lm_generate.py``) holds ``slots`` KV-cache rows. Between two decode steps the loop
reads every pending command: new requests join (their prompt is prefilled into a free row), cancelled ones leave
at once. Each step samples one token for every active request with ONE batched forward pass and sends the new
text of all of them to the server in one message. Requests beyond ``slots`` wait here, in arrival order.
"""
from __future__ import annotations

import collections
import time
from multiprocessing.connection import Connection
from typing import Any

from genloom.serve import ipc


class LMLoop:
    def __init__(self, model: Any, conn: Connection, *, slots: int) -> None:
        from genloom.models.lm_generate import DecodeBatch

        self.model = model
        self.conn = conn
        self.batch = DecodeBatch(model, slots=slots)
        self.slots = slots
        self.waiting: collections.deque[dict[str, Any]] = collections.deque()
        self.rid_of: dict[int, int] = {}  # slot -> request id
        self.slot_of: dict[int, int] = {}  # request id -> slot
        self.done: list[list[Any]] = []  # [rid, reason, error, tokens] finished since the last message
        self.admitted: list[list[Any]] = []  # [rid, seconds it waited here for a slot] since the last message
        self._max_new: dict[int, int] = {}  # request id -> its max_new_tokens

    def run(self) -> None:
        while True:
            try:
                if not self.rid_of and not self.waiting:
                    if not self._handle(self.conn.recv_bytes()):  # idle: block until there is work
                        return
                while self.conn.poll(0):
                    if not self._handle(self.conn.recv_bytes()):
                        return
            except (EOFError, OSError):
                return
            self._admit()
            events: list[list[Any]] = []
            n = 0
            if self.rid_of:
                for slot, _tok in self.batch.step():  # one batched forward for every active request
                    n += 1
                    rid = self.rid_of[slot]
                    text = self.batch.emit(slot)  # holds back a tail that may start a stop string
                    if text:
                        events.append([rid, text])
                for slot in [s for s in self.rid_of if self.batch.is_done(s)]:
                    rid = self.rid_of.pop(slot)
                    del self.slot_of[rid]
                    ntok = len(self.batch.tokens(slot))
                    reason = "length" if ntok >= self._max_new[rid] else "stop"
                    self._max_new.pop(rid, None)
                    self.batch.remove(slot)
                    self.done.append([rid, reason, None, ntok])
            if events or self.done or self.admitted:
                msg = {"op": "tokens", "events": events, "done": self.done, "n": n}
                if self.admitted:
                    msg["admitted"] = self.admitted
                try:
                    self.conn.send_bytes(ipc.encode(msg))
                except (BrokenPipeError, OSError):
                    return
                self.done, self.admitted = [], []

    def _handle(self, raw: bytes) -> bool:
        header, _ = ipc.decode(raw)
        op = header.get("op")
        if op == "stop":
            return False
        if op == "lm_add":
            header["_t"] = time.monotonic()
            self.waiting.append(header)
        elif op == "lm_cancel":
            rid = header["rid"]
            self.waiting = collections.deque(h for h in self.waiting if h["rid"] != rid)
            slot = self.slot_of.pop(rid, None)
            if slot is not None:
                del self.rid_of[slot]
                self._max_new.pop(rid, None)
                self.batch.remove(slot)  # the row is free for the next request at once
        return True

    def _admit(self) -> None:
        while self.waiting and len(self.rid_of) < self.slots:
            h = self.waiting.popleft()
            rid = h["rid"]
            waited = time.monotonic() - h["_t"]  # queue time: arrival here until a decode slot (before prefill)
            try:
                ids = self.model.encode(h["prompt"], what="prompt")
                slot = self.batch.add(ids, max_new_tokens=h["max_new_tokens"], temperature=h["temperature"],
                                      top_k=h.get("top_k"), top_p=h.get("top_p"), seed=h.get("seed"),
                                      stop=h.get("stop"))
            except Exception as e:  # bad prompt or sampling options: this request fails alone
                self.done.append([rid, "error", str(e) or type(e).__name__, 0])
                continue
            self.admitted.append([rid, waited])
            self.rid_of[slot] = rid
            self.slot_of[rid] = slot
            self._max_new[rid] = h["max_new_tokens"]
