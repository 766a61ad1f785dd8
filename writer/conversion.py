"""Where the writer converts events: in its own thread, or in one converter process beside it.

Measured (docs/benchmarks.md): decoding a queue item and converting its events to line
protocol is three quarters of the writer's Python time, and Python runs it on one core while
InfluxDB, on the other, could take more than twice as many points. With more than one CPU the
writer hands each item it takes, still encoded, to a converter process and does the rest itself
(take, post, acknowledge); conversion of a round overlaps the post of the previous one.

The converter process runs ``WriterLoop._convert`` itself, the same per-event rule as the
inline path (a line, nothing, or a dead letter with its reason), on the same ``Converter``. It
holds no queue file and no lock: it gets bytes and returns lines. It is a fresh interpreter
(``python -m writer.conversion``: nothing of the writer's open files or threads is inherited,
and no resource-tracker process of multiprocessing comes with it) talking pickles over a
socket pair; it exits when the writer closes the socket or dies, and if it dies first the
writer stops with an error (exit 1) and is restarted: what it had taken is taken again.
"""

from __future__ import annotations

import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import traceback
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Callable

from ha_ingestor.config.schema import SchemaConfig
from ha_ingestor.queue import Batch, decode_events
from writer.convert import Converter

if TYPE_CHECKING:
    from writer.loop import Round

JOIN_TIMEOUT_S = 5.0


def separate_process_helps() -> bool:
    """A converter process pays only with a second CPU to run on."""
    try:
        return len(os.sched_getaffinity(0)) > 1
    except AttributeError:                       # not Linux
        return (os.cpu_count() or 1) > 1


class InlineConversion:
    """Convert each item as it is taken, in the writer's thread."""

    def __init__(self, convert_item: Callable[["Round", str, int, list[dict]], None]):
        self.convert_item = convert_item

    def add(self, batch: "Round", source: str, item: Batch) -> None:
        self.convert_item(batch, source, item.item_id, item.events)

    def finish(self, batch: "Round") -> None:
        """Every item added is converted already."""

    def close(self) -> None:
        pass


class ProcessConversion:
    """Items go to the converter process as they are taken; ``finish`` waits for their lines
    and adds them to the round in the order the items were taken. A thread receives the
    answers while the writer sends (both sides writing into full pipes would wait for ever)."""

    def __init__(self, schema: SchemaConfig):
        ours, theirs = socket.socketpair()
        self._process = subprocess.Popen(
            [sys.executable, "-m", "writer.conversion", str(theirs.fileno())],
            pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL)
        theirs.close()
        self._conn = Connection(ours.detach())
        self._conn.send(schema)
        self._sent: list[tuple[str, int]] = []
        self._answers: queue.SimpleQueue = queue.SimpleQueue()
        self._receiver = threading.Thread(target=self._receive_all, name="convert-answers",
                                          daemon=True)
        self._receiver.start()

    def add(self, batch: "Round", source: str, item: Batch) -> None:
        self._send((source, item.item_id, item.data))
        self._sent.append((source, item.item_id))

    def finish(self, batch: "Round") -> None:
        for source, item_id in self._sent:
            lines, positions, dead = self._receive()
            batch.lines.extend(lines)
            batch.owners.extend((source, item_id, position) for position in positions)
            for event, reason in dead:
                batch.add_dead(source, event, reason)
        self._sent.clear()

    def close(self) -> None:
        try:
            self._conn.send(None)
        except OSError:
            pass
        try:
            self._process.wait(JOIN_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait(JOIN_TIMEOUT_S)
        self._receiver.join(JOIN_TIMEOUT_S)      # ends at the converter's end of the socket
        self._conn.close()

    def _send(self, message: tuple) -> None:
        try:
            self._conn.send(message)
        except OSError as exc:
            raise self._died() from exc

    def _receive_all(self) -> None:
        while True:
            try:
                self._answers.put(self._conn.recv())
            except (EOFError, OSError):
                self._answers.put(None)
                return

    def _receive(self) -> tuple:
        answer = self._answers.get()
        if answer is None:
            raise self._died()
        if isinstance(answer, str):             # an exception in the converter process
            raise RuntimeError(f"the converter process failed:\n{answer}")
        return answer

    def _died(self) -> RuntimeError:
        try:
            code = self._process.wait(1.0)
        except subprocess.TimeoutExpired:
            code = None
        return RuntimeError(f"the converter process (pid {self._process.pid}) stopped (exit "
                            f"code {code}); items in flight are written again after a restart")


def _serve(conn: Connection) -> None:
    """The converter process: the schema, then (source, item id, stored JSON) in and (lines,
    positions, dead letters) out, until the writer closes the socket. Signals are the writer's
    business."""
    from writer.loop import Round, WriterLoop

    class Stage(WriterLoop):
        """The loop's methods, for ``_convert``; of its state only the converter is here (what
        ``_convert`` uses of the loop must be set up in this constructor too)."""

        def __init__(self, converter: Converter):
            self.converter = converter

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        stage = Stage(Converter(conn.recv()))
    except (EOFError, OSError):
        return
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return
        if message is None:
            return
        source, item_id, data = message
        try:
            part = Round()
            stage._convert(part, source, item_id, decode_events(data))
            answer = (part.lines, [p for _s, _i, p in part.owners], part.dead.get(source, []))
        except Exception:  # noqa: BLE001 - the writer raises it as its own failure
            answer = traceback.format_exc()
        conn.send(answer)


if __name__ == "__main__":
    _serve(Connection(int(sys.argv[1])))
