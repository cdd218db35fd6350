"""Progress tells the truth: a time-budget run counts down the budget; a log file gets plain lines."""

import io

from gptlab.training.progress import Progress


class Tty(io.StringIO):
    def isatty(self):
        return True


def test_plain_lines_when_not_a_terminal():
    out = io.StringIO()
    p = Progress(1000, 0, stream=out, line_every=0)
    p.update(10, 5.0, loss=3.25, tok_s=9200)
    p.update(20, 10.0)
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue() and len(lines) == 2
    assert lines[0] == "step 10/1,000, loss 3.250, 9,200 tok/s, ETA 8:15"   # 990 steps at 0.5 s each
    assert lines[1].startswith("step 20/1,000, loss 3.250")


def test_lines_are_spaced_in_time(monkeypatch):
    # A machine booted 10 s ago: the monotonic clock starts at boot, and the first line still comes.
    clock = iter(range(10, 10_000))
    monkeypatch.setattr("gptlab.training.progress.time.monotonic", lambda: float(next(clock)))
    out = io.StringIO()
    p = Progress(1000, 0, stream=out, line_every=3600)
    for s in range(1, 200):
        p.update(s, s * 0.01)
    assert len(out.getvalue().splitlines()) == 1


def test_time_budget_counts_down_the_budget_not_the_epochs():
    out = io.StringIO()
    p = Progress(2965, 0, time_budget=240, stream=out, line_every=0)
    p.update(100, 60.0, loss=2.0, tok_s=1000)
    # 2,865 steps at 0.6 s would take 28:39; the budget ends in 3:00, and that is what is shown.
    assert out.getvalue().strip() == "step 100, loss 2.000, 1,000 tok/s, 1:00 of 4:00, ETA 3:00"


def test_terminal_bar_measures_the_budget_in_seconds():
    out = Tty()
    p = Progress(2965, 0, time_budget=240, stream=out)
    p.update(100, 60.0, loss=2.0, tok_s=1000)
    p.close()
    text = out.getvalue()
    assert "60/240s of the time budget" in text and "ETA 3:00" in text and "2965" not in text


def test_the_rate_is_named_by_what_the_task_counts():
    # The image tasks count images, not tokens: "52 tok/s" from a denoiser would be a wrong unit.
    from gptlab.training.loop import Task
    from gptlab.training.tasks.diffusion import DiffusionTask
    from gptlab.training.tasks.reward import RewardTask
    assert (Task.unit, DiffusionTask.unit, RewardTask.unit) == ("tok", "img", "pair")
    out = io.StringIO()
    Progress(1000, 0, stream=out, line_every=0, unit=DiffusionTask.unit).update(10, 5.0, loss=0.25, tok_s=52)
    assert out.getvalue().strip() == "step 10/1,000, loss 0.250, 52 img/s, ETA 8:15"
