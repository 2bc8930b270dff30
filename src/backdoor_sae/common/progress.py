"""What a running stage is doing, from the notebook's kernel to the runner's console.

The convention, for every notebook and the package code it calls: in any loop that takes more than
a few seconds, call ``backdoor_sae.common.progress.report(task, done, total, **values)``, e.g.
``report("fine-tune lora", step, 300, loss=0.12, year_effect=0.04)``. Outside the runner it does
nothing. The runner (:func:`backdoor_sae.pipeline.runner.execute_stage`) names a file in the environment
variable :data:`ENV` before it starts the stage's kernel; ``report`` appends one JSON line to it
(at most one a second per task, and always the first and the last). A :class:`Follower` thread in
the runner reads that file and prints ``<stage>: <task> <done>/<total>, <values>, <N> min left``
at a readable rate, on a terminal as in a CI log. Nothing here changes what a stage computes.
"""

from __future__ import annotations

import json
import math
import os
import threading
import time
from pathlib import Path

#: The environment variable that names the progress file of the running stage.
ENV = "BACKDOOR_SAE_PROGRESS"
#: ``report`` writes a task's line at most this often (seconds), its first and last lines always.
MIN_GAP_S = 1.0

_last_written: dict[str, float] = {}


def report(task: str, done: int | None = None, total: int | None = None, **values) -> None:
    """Say that ``task`` has done ``done`` of ``total`` units; ``values`` are shown beside (numbers or text)."""
    path = os.environ.get(ENV)
    if not path:
        return
    now = time.time()
    last = _last_written.get(task)
    final = done is not None and total is not None and done >= total
    if last is not None and not final and now - last < MIN_GAP_S:
        return
    _last_written[task] = now
    shown = {k: v for k, v in values.items() if v is not None and not (isinstance(v, float) and math.isnan(v))}
    line = json.dumps({"time": now, "task": task, "done": done, "total": total, "values": shown}, default=str)
    with open(path, "a") as f:
        f.write(line + "\n")


def duration(seconds: float) -> str:
    """``42 s``, ``5 min``, ``1 h 05 min``."""
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60):02d} min"


def _value(value) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def describe(event: dict, first: dict | None = None) -> str:
    """One console line for ``event``; with ``first`` (the task's first event), the time left at its rate so far."""
    text = event["task"]
    done, total = event.get("done"), event.get("total")
    if done is not None:
        text += f" {done}/{total}" if total is not None else f" {done}"
    parts = [text] + [f"{k.replace('_', ' ')} {_value(v)}" for k, v in event.get("values", {}).items()]
    if first is not None and total is not None and done is not None and first.get("done") is not None:
        units, seconds = done - first["done"], event["time"] - first["time"]
        if 0 < done < total and units > 0 and seconds > 0:
            parts.append(f"{duration((total - done) * seconds / units)} left")
    return ", ".join(parts)


class Follower:
    """Read a stage's progress file and print its news as ``<stage>: <line>``.

    :meth:`poll` reads what was appended since the last call and prints the newest event when
    ``interval`` seconds have passed since the last printed line, when the task changed, or when a
    task finished. Use it as a context manager to poll from a thread until the stage ends.
    """

    def __init__(self, path: str | Path, stage: str, log=print, interval: float = 10.0):
        self.path, self.stage, self.log, self.interval = Path(path), stage, log, interval
        self._offset, self._partial = 0, ""
        self._first: dict[str, dict] = {}
        self._last_done: dict[str, int | None] = {}
        self._pending: dict | None = None
        self._printed_task: str | None = None
        self._printed_at = -math.inf
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _read(self) -> list[dict]:
        if not self.path.exists():
            return []
        with open(self.path) as f:
            f.seek(self._offset)
            chunk = f.read()
            self._offset = f.tell()
        lines = (self._partial + chunk).split("\n")
        self._partial = lines.pop()  # an unfinished last line waits for its end
        events = []
        for line in lines:
            try:
                events.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return events

    def poll(self, final: bool = False) -> None:
        for event in self._read():
            first = self._first.get(event["task"])
            if first is None or (event.get("done") or 0) < (self._last_done.get(event["task"]) or 0):
                self._first[event["task"]] = event  # a new task, or the same task begun again
            self._last_done[event["task"]] = event.get("done")
            finished = event.get("done") is not None and event.get("total") is not None and event["done"] >= event["total"]
            if self._pending is not None and self._pending["task"] != event["task"]:
                self._print(self._pending)  # the last news of a task that ended
            self._pending = event
            if finished or event["task"] != self._printed_task or time.monotonic() - self._printed_at >= self.interval:
                self._print(event)
        if final and self._pending is not None:
            self._print(self._pending)

    def _print(self, event: dict) -> None:
        self.log(f"{self.stage}: {describe(event, self._first.get(event['task']))}")
        self._printed_task, self._printed_at = event["task"], time.monotonic()
        self._pending = None

    def _follow(self) -> None:
        while not self._stop.wait(min(self.interval, 2.0)):
            self.poll()

    def __enter__(self) -> Follower:
        self._thread = threading.Thread(target=self._follow, name=f"progress {self.stage}", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.poll(final=True)
