"""Where the writer converts: in its own thread, or in one converter process beside it.

Measured (docs/benchmarks.md): decoding a queue item and converting its events to line
protocol is three quarters of the writer's Python time, and Python runs it on one core while
InfluxDB, on the other, could take more than twice as many points. With more than one CPU the
writer hands each item it takes, still encoded, to a converter process and does the rest itself
(take, post, acknowledge); conversion of a round overlaps the post of the previous one.

Both paths run ``convert_item``: one item's stored bytes to lines, and whatever one event raises
to that event's dead letter with the reason (an item whose bytes cannot be decoded: its bytes,
as one dead letter). The converter process holds no queue file and no lock: it gets bytes and
returns lines. It is a fresh interpreter (``python -m writer.conversion``: nothing of the
writer's open files or threads is inherited, and no resource-tracker process of multiprocessing
comes with it) talking pickles over a socket pair; it exits when the writer closes the socket,
and Linux kills it when the writer dies. If it dies first, the writer stops with an error (exit
1) and is restarted: what it had taken is taken again.

Crashes that no ``except`` catches (a C library's, the OOM killer's, a loop killed for not
ticking) are counted against the item being converted (``writer.crashguard``): inline, each
item is marked before it is converted; with a converter process, an item is marked when the
writer has to wait for its lines (conversion is behind, or the process died on it), so an item
converted while the writer waits for InfluxDB is never blamed for that wait.
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

from ha_ingestor import metrics
from ha_ingestor.config.schema import SchemaConfig
from ha_ingestor.errors import ConverterStopped, UnreadableItem
from ha_ingestor.lifecycle import signal_when_parent_dies
from ha_ingestor.queue import Batch, decode_events, unreadable_letter
from writer.convert import Converter

if TYPE_CHECKING:
    from writer.loop import Round


JOIN_TIMEOUT_S = 5.0
Mark = Callable[[str, int, int], None]      # (source, item id, deaths before): being converted


def convert_item(converter: Converter, batch: "Round", source: str, item_id: int,
                 data: bytes) -> None:
    """One stored item to its UTF-8 lines; an event that cannot become one is a dead letter
    with the reason, and so is an item whose bytes cannot be decoded."""
    try:
        events = decode_events(data)
    except UnreadableItem as exc:
        batch.add_dead(source, unreadable_letter(item_id, data), f"unreadable item: {exc}",
                       "unreadable_item")
        return
    encode = converter.encode           # `ha-ingestor convert` prints exactly what it gives
    lines, owners = batch.lines, batch.owners
    for index, event in enumerate(events):
        encoded, reason, kind = encode(event)
        if reason is not None:
            batch.add_dead(source, event, reason, kind)
        elif encoded is not None:
            lines.append(encoded)
            owners.append((source, item_id, index))


def separate_process_helps() -> bool:
    """A converter process pays only with a second CPU to run on."""
    try:
        return len(os.sched_getaffinity(0)) > 1
    except AttributeError:                       # not Linux
        return (os.cpu_count() or 1) > 1


class InlineConversion:
    """Convert each item as it is taken, in the writer's thread."""

    def __init__(self, converter: Converter, mark: Mark):
        self.converter = converter
        self.mark = mark

    def add(self, batch: "Round", source: str, item: Batch, deaths: int) -> None:
        self.mark(source, item.item_id, deaths)
        convert_item(self.converter, batch, source, item.item_id, item.data)

    def finish(self, batch: "Round") -> None:
        """Every item added is converted already."""

    def close(self) -> None:
        pass


class ProcessConversion:
    """Items go to the converter process as they are taken; ``finish`` waits for their lines
    and adds them to the round in the order the items were taken. A thread receives the
    answers while the writer sends (both sides writing into full pipes would wait for ever)."""

    def __init__(self, schema: SchemaConfig, mark: Mark):
        ours, theirs = socket.socketpair()
        self._process = subprocess.Popen(
            [sys.executable, "-m", "writer.conversion", str(theirs.fileno()), str(os.getpid())],
            pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL)
        theirs.close()
        self._conn = Connection(ours.detach())
        self._conn.send(schema)
        self._mark = mark
        self._broken = False
        self._sent: list[tuple[str, int, int, bool]] = []    # (source, item, deaths, sent)
        self._answers: queue.SimpleQueue = queue.SimpleQueue()
        self._receiver = threading.Thread(target=self._receive_all, name="convert-answers",
                                          daemon=True)
        self._receiver.start()

    def add(self, batch: "Round", source: str, item: Batch, deaths: int) -> None:
        if not self._broken:                 # once it died, finish() says on which item
            try:
                self._conn.send((source, item.item_id, item.data))
            except OSError:
                self._broken = True
        self._sent.append((source, item.item_id, deaths, not self._broken))

    def finish(self, batch: "Round") -> None:
        """The lines of every item added, in order. An item whose lines are not there yet is
        being converted: it is marked while the writer waits, and if the process dies, the
        item it died on is marked and the writer stops."""
        try:
            for source, item_id, deaths, sent in self._sent:
                lines, positions, dead, counted = self._receive(source, item_id, deaths, sent)
                metrics.add_counts(counted)          # e.g. secret keys withheld
                batch.lines.extend(lines)
                batch.owners.extend((source, item_id, position) for position in positions)
                for event, reason, kind in dead:
                    batch.add_dead(source, event, reason, kind)
        finally:
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

    def _receive_all(self) -> None:
        while True:
            try:
                self._answers.put(self._conn.recv())
            except (EOFError, OSError):
                self._answers.put(None)
                return

    def _receive(self, source: str, item_id: int, deaths: int, sent: bool) -> tuple:
        """The answer for one item; the item is marked when it is not there yet (it is being
        converted) or when the process died instead of answering (it died on it, unless it was
        dead before the item was sent)."""
        try:
            answer = self._answers.get_nowait()
        except queue.Empty:
            if sent:
                self._mark(source, item_id, deaths)
            answer = self._answers.get()
        else:
            if answer is None and sent:
                self._mark(source, item_id, deaths)
        if answer is None:
            self._answers.put(None)              # every later call sees the death too
            raise self._died()
        if isinstance(answer, str):             # an exception in the converter process
            raise ConverterStopped(f"the converter process failed:\n{answer}")
        return answer

    def _died(self) -> ConverterStopped:
        try:
            code = self._process.wait(1.0)
        except subprocess.TimeoutExpired:
            code = None
        return ConverterStopped(f"the converter process (pid {self._process.pid}) stopped (exit "
                                f"code {code}); items in flight are written again after a "
                                f"restart")


def _serve(conn: Connection, writer_pid: int) -> None:
    """The converter process: the schema, then (source, item id, stored JSON) in and (lines,
    positions, dead letters with their metric label, what its counters counted) out, until the
    writer closes the socket. Signals are the writer's business; its death is this process's
    end."""
    from writer.loop import Round

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal_when_parent_dies(signal.SIGKILL)
    if os.getppid() != writer_pid:               # it died before the line above
        return
    try:
        converter = Converter(conn.recv())
    except (EOFError, OSError):
        return
    counts = metrics.counter_values()
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
            convert_item(converter, part, source, item_id, data)
            dead = [(event, reason, kind) for (event, reason), kind in
                    zip(part.dead.get(source, []), part.dead_kinds.get(source, []))]
            counts, counted = metrics.counter_changes(counts)
            answer = (part.lines, [p for _s, _i, p in part.owners], dead, counted)
        except Exception:  # noqa: BLE001 - the writer raises it as its own failure
            answer = traceback.format_exc()
        conn.send(answer)


if __name__ == "__main__":
    _serve(Connection(int(sys.argv[1])), int(sys.argv[2]))
