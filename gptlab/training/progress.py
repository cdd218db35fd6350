"""Progress of a training run, told truthfully.

In a terminal: a tqdm bar. With a time budget the bar measures the budget (seconds), since the run
stops when the budget is spent, not after the step count its epochs would give. When the output is
not a terminal (a log file, CI), a carriage-return bar writes thousands of updates: one plain line
every few seconds instead (step, loss, the rate in what the task counts: tokens/s, or images/s,
pairs/s for tasks that count rows; time left).
"""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO


def _clock(seconds: float) -> str:
    s = max(int(seconds + 0.5), 0)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


class Progress:
    def __init__(self, total_steps: int | None, step: int, time_budget: float = 0.0,
                 stream: TextIO | None = None, line_every: float = 5.0, unit: str = "tok"):
        self.total, self.start, self.step, self.budget = total_steps, step, step, time_budget
        self.unit = unit  # what the rate counts: tokens, or rows (images, pairs) for tasks without tokens
        self.stream = stream if stream is not None else sys.stderr
        # -inf, not 0: time.monotonic() counts from boot on Linux, so on a machine up for less than
        # line_every seconds a 0 here held back the first line.
        self.line_every, self.last_line = line_every, float("-inf")
        self.loss: float | None = None
        self.tok_s: float | None = None
        self.elapsed = 0.0
        self.bar: Any = None
        if self.stream.isatty():
            from tqdm import tqdm
            if self.budget:
                self.bar = tqdm(total=self.budget, unit="s", file=self.stream, dynamic_ncols=True, mininterval=0.5,
                                bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f}s of the time budget [{postfix}]")
            else:
                self.bar = tqdm(total=total_steps, initial=step, unit="step", file=self.stream,
                                dynamic_ncols=True, mininterval=0.5)

    def left(self) -> float | None:
        """Seconds to the end: the budget's rest, or the steps left at this run's pace, whichever is first."""
        done = self.step - self.start
        by_steps = (self.total - self.step) * self.elapsed / done if self.total and done else None
        by_budget = max(self.budget - self.elapsed, 0.0) if self.budget else None
        known = [t for t in (by_steps, by_budget) if t is not None]
        return min(known) if known else None

    def update(self, step: int, elapsed: float, loss: float | None = None, tok_s: float | None = None) -> None:
        self.step, self.elapsed = step, elapsed
        if loss is not None:
            self.loss, self.tok_s = loss, tok_s
        if self.bar is not None:
            if self.budget:
                self.bar.n = min(elapsed, self.budget)
                self.bar.set_postfix_str(self._facts(), refresh=False)
                self.bar.update(0)
            else:
                self.bar.update(step - self.bar.n)
                if loss is not None:
                    self.bar.set_postfix({"loss": f"{loss:.3f}", f"{self.unit}/s": f"{tok_s or 0:,.0f}"}, refresh=False)
            return
        now = time.monotonic()
        if now - self.last_line >= self.line_every:
            self.last_line = now
            self.stream.write(self._facts() + "\n")
            self.stream.flush()

    def _facts(self) -> str:
        parts = [f"step {self.step:,}" + (f"/{self.total:,}" if self.total and not self.budget else "")]
        if self.loss is not None:
            parts.append(f"loss {self.loss:.3f}")
        if self.tok_s is not None:
            parts.append(f"{self.tok_s:,.0f} {self.unit}/s")
        if self.budget:
            parts.append(f"{_clock(self.elapsed)} of {_clock(self.budget)}")
        left = self.left()
        if left is not None:
            parts.append(f"ETA {_clock(left)}")
        return ", ".join(parts)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
