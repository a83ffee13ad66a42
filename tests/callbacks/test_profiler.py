"""``Profiler``: Chrome traces holding exactly the schedule's active steps and the model's ops, written whole (also
gzipped, also when the run fails, never under a trace's name half-written), the handler table with exact call counts
read back from ``handlers.csv`` and from the console, a resumed run profiled from where it resumed, and bad options
refused."""

from __future__ import annotations

import csv
import gzip
import io
import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from callbacks import Callback, Checkpointer, HandlerSpec, Profiler
from callbacks.profiler import TABLE_COLUMNS
from lifecycle import CallbackError, Event, Status
from tests.support import make_trainer
from trainers import BaseTrainer


class Every3(Callback):
    every = "3it"
    scheduled = ("post_step",)

    def pre_step(self, trainer: BaseTrainer, **payload: Any) -> None:
        pass

    def post_step(self, trainer: BaseTrainer, **payload: Any) -> None:
        pass


class SleepyEpochs(Callback):
    def post_epoch(self, trainer: BaseTrainer, **payload: Any) -> None:
        time.sleep(0.03)


class FailAt(Callback):
    def __init__(self, iteration: int) -> None:
        super().__init__()
        self.iteration = iteration

    def post_step(self, trainer: BaseTrainer, **payload: Any) -> None:
        if trainer.state.iteration == self.iteration:
            raise RuntimeError("the app broke")


def plain_console() -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    return Console(file=out, width=40, color_system=None), out


def traces(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if ".pt.trace." in p.name)


def trace_events(path: Path) -> list[dict[str, Any]]:
    raw = gzip.decompress(path.read_bytes()) if path.name.endswith(".gz") else path.read_bytes()
    events = json.loads(raw)["traceEvents"]
    assert isinstance(events, list)
    return events


def step_names(path: Path) -> set[str]:
    return {e["name"] for e in trace_events(path) if str(e.get("name", "")).startswith("ProfilerStep#")}


def read_table(directory: Path) -> list[dict[str, str]]:
    with (directory / "handlers.csv").open(newline="") as handle:
        reader = csv.DictReader(handle)
        assert tuple(reader.fieldnames or ()) == TABLE_COLUMNS
        return list(reader)


def test_the_trace_holds_exactly_the_active_steps_and_the_models_ops(tmp_path: Path) -> None:
    console, _ = plain_console()
    profiler = Profiler(wait=1, warmup=1, active=2, console=console)
    trainer = make_trainer(items=20, batch_size=2, max_epochs=1, run_dir=tmp_path, callbacks=[profiler])
    assert trainer.train() == Status.COMPLETED
    (trace,) = traces(tmp_path / "profile")
    assert trace.name.startswith("rank0.")
    assert trace.name.endswith(".pt.trace.json")
    assert step_names(trace) == {"ProfilerStep#2", "ProfilerStep#3"}  # wait #0, warmup #1, active #2 #3
    assert profiler.traces == {trace: (3, 4)}  # ProfilerStep#N is iteration N+1 of a fresh run
    ops = {e["name"] for e in trace_events(trace) if e.get("cat") == "cpu_op"}
    assert {"aten::linear", "aten::addmm", "aten::mse_loss"} <= ops  # the model's forward and loss
    assert not [p for p in (tmp_path / "profile").iterdir() if "partial" in p.name]


def test_repeated_cycles_after_skip_first_write_one_gzipped_trace_each(tmp_path: Path) -> None:
    console, _ = plain_console()
    profiler = Profiler(skip_first=1, wait=1, warmup=1, active=1, repeat=2, gzip=True, console=console)
    trainer = make_trainer(items=24, batch_size=2, max_epochs=1, run_dir=tmp_path, callbacks=[profiler])
    assert trainer.train() == Status.COMPLETED  # 12 iterations; the schedule is over after 7
    found = traces(tmp_path / "profile")
    assert [p.name.endswith(".pt.trace.json.gz") for p in found] == [True, True]
    assert [step_names(p) for p in found] == [{"ProfilerStep#3"}, {"ProfilerStep#6"}]
    assert list(profiler.traces.values()) == [(4,), (7,)]


def test_a_failing_run_finishes_the_trace_in_progress(tmp_path: Path) -> None:
    console, _ = plain_console()
    profiler = Profiler(wait=0, warmup=1, active=5, console=console)
    trainer = make_trainer(items=20, batch_size=2, max_epochs=1, run_dir=tmp_path, callbacks=[FailAt(3), profiler])
    with pytest.raises(CallbackError) as caught:
        trainer.train()
    assert caught.value.handler == "FailAt.post_step"  # the original handler, not the timer around it
    assert trainer.status == Status.FAILED
    (trace,) = traces(tmp_path / "profile")
    assert trace.name.endswith(".pt.trace.json")  # finished and renamed: no partial file left
    assert step_names(trace) == {"ProfilerStep#1", "ProfilerStep#2"}  # iteration 3 failed inside #2
    assert profiler.traces == {trace: (2, 3)}
    rows = {(r["handler"], r["event"]): r for r in read_table(tmp_path / "profile")}
    assert rows["FailAt.post_step", "post_step"]["calls"] == "3"  # the call that raised is counted
    assert rows["steps (pre_step to post_step)", ""]["calls"] == "2"  # the failed step never ended


def test_a_run_that_ends_while_warming_up_writes_no_trace(tmp_path: Path) -> None:
    console, _ = plain_console()
    profiler = Profiler(wait=2, warmup=3, active=1, console=console)
    trainer = make_trainer(items=8, batch_size=2, max_epochs=1, run_dir=tmp_path, callbacks=[profiler])
    assert trainer.train() == Status.COMPLETED  # 4 iterations: wait, wait, warmup, warmup
    assert traces(tmp_path / "profile") == []
    assert profiler.traces == {}
    assert (tmp_path / "profile" / "handlers.csv").is_file()


def test_the_handler_table_counts_every_handler_exactly(tmp_path: Path) -> None:
    console, out = plain_console()
    profiler = Profiler(tmp_path / "prof", wait=1, warmup=1, active=1, console=console)
    trainer = make_trainer(items=20, batch_size=2, max_epochs=2, callbacks=[Every3(), SleepyEpochs(), profiler])
    assert trainer.train() == Status.COMPLETED  # 20 iterations
    rows = read_table(tmp_path / "prof")
    handlers = {(r["handler"], r["event"]): int(r["calls"]) for r in rows if r["kind"] == "handler"}
    assert handlers == {
        ("Every3.pre_step", "pre_step"): 20,
        ("Every3.post_step", "post_step"): 20 // 3,
        ("SleepyEpochs.post_epoch", "post_epoch"): 2,
        ("Profiler.pre_training", "pre_training"): 1,
        ("Profiler.post_step", "post_step"): 20,
    }
    kinds = [r["kind"] for r in rows]
    assert (kinds[0], kinds[-1], kinds.count("engine"), kinds.count("steps")) == ("engine", "steps", 1, 1)
    engine, steps = rows[0], rows[-1]
    assert int(engine["calls"]) == int(steps["calls"]) == 20
    assert float(steps["percent_of_steps"]) == 100.0
    assert 0 < float(engine["total_ms"]) < float(steps["total_ms"])
    totals = [float(r["total_ms"]) for r in rows if r["kind"] == "handler"]
    assert totals == sorted(totals, reverse=True)  # largest first
    (sleepy,) = [r for r in rows if r["handler"] == "SleepyEpochs.post_epoch"]
    assert float(sleepy["total_ms"]) >= 2 * 30.0
    assert float(sleepy["mean_us"]) >= 30_000.0
    share = 100.0 * float(sleepy["total_ms"]) / float(steps["total_ms"])
    assert float(sleepy["percent_of_steps"]) == pytest.approx(share, abs=0.1)
    # the console: the table on whole lines, however narrow the console, then the trace and what it recorded
    text = out.getvalue()
    assert "handler times over 20 steps (training completed)" in text
    line = next(ln for ln in text.splitlines() if "Every3.post_step" in ln)
    assert line.split("│")[1:3] == [" post_step    ", "     6 "]
    (trace,) = profiler.traces
    assert f"profile trace {trace}: iterations 3-3" in text
    # the bus got its plain plans back
    for event in Event:
        for fn, _, handle in trainer.bus.channel(event).plan:
            assert fn is handle.fn


class TwoOnEpoch(Callback):
    """Two handlers on one event: the bus names both ``TwoOnEpoch.post_epoch``."""

    def handlers(self) -> Iterator[HandlerSpec]:
        yield Event.POST_EPOCH, self.first, None
        yield Event.POST_EPOCH, self.second, None

    def first(self, trainer: BaseTrainer, **payload: Any) -> None:
        pass

    def second(self, trainer: BaseTrainer, **payload: Any) -> None:
        pass


def test_two_handlers_of_one_callback_on_one_event_are_told_apart(tmp_path: Path) -> None:
    console, _ = plain_console()
    trainer = make_trainer(items=8, max_epochs=3, run_dir=tmp_path, callbacks=[TwoOnEpoch(), Profiler(console=console)])
    assert trainer.train() == Status.COMPLETED
    rows = {r["handler"]: int(r["calls"]) for r in read_table(tmp_path / "profile") if r["event"] == "post_epoch"}
    assert rows == {"TwoOnEpoch.post_epoch (TwoOnEpoch.first)": 3, "TwoOnEpoch.post_epoch (TwoOnEpoch.second)": 3}


def test_a_resumed_run_is_profiled_from_where_it_resumed(tmp_path: Path) -> None:
    first = make_trainer(items=12, batch_size=2, max_epochs=1, callbacks=[Checkpointer(tmp_path / "ckpt")])
    assert first.train() == Status.COMPLETED  # 6 iterations, saved at the end
    console, _ = plain_console()
    profiler = Profiler(tmp_path / "prof", wait=1, warmup=1, active=2, console=console)
    second = make_trainer(items=12, batch_size=2, max_epochs=2, callbacks=[Checkpointer(tmp_path / "ckpt"), profiler])
    assert second.restore(tmp_path / "ckpt") is not None
    assert second.train() == Status.COMPLETED
    assert second.state.iteration == 12
    (trace,) = traces(tmp_path / "prof")
    assert step_names(trace) == {"ProfilerStep#2", "ProfilerStep#3"}  # counted from the resumed iteration
    assert profiler.traces == {trace: (9, 10)}
    rows = {r["handler"]: int(r["calls"]) for r in read_table(tmp_path / "prof")}
    assert rows["Profiler.post_step"] == 6  # this process's steps
    assert profiler.state_dict() == {}


def test_handler_table_off_leaves_the_bus_untimed(tmp_path: Path) -> None:
    console, out = plain_console()
    profiler = Profiler(tmp_path, wait=0, warmup=1, active=1, handler_table=False, console=console)
    trainer = make_trainer(items=8, batch_size=2, max_epochs=1, callbacks=[profiler])
    with trainer.bus.time_handlers() as mine:  # free for the user: the profiler does not time
        assert trainer.train() == Status.COMPLETED
    assert profiler.times is None
    assert len(traces(tmp_path)) == 1
    assert not (tmp_path / "handlers.csv").exists()
    assert "handler times" not in out.getvalue()
    assert [r.calls for r in mine.handlers() if r.name == "Profiler.post_step"] == [4]


def test_a_second_timer_is_refused_when_the_profiler_is_added(tmp_path: Path) -> None:
    trainer = make_trainer(run_dir=tmp_path)
    times = trainer.bus.time_handlers()
    with pytest.raises(RuntimeError, match=r"Profiler 'Profiler': handler timing is already on .*handler_table=False"):
        trainer.add_callback(Profiler())
    assert trainer.callbacks == ()
    times.stop()


def test_removing_the_profiler_gives_back_the_plain_plans(tmp_path: Path) -> None:
    trainer = make_trainer(run_dir=tmp_path, callbacks=[Every3()])
    before = {e: [tuple(map(id, entry)) for entry in trainer.bus.channel(e).plan] for e in Event}
    profiler = trainer.add_callback(Profiler())
    assert isinstance(profiler, Profiler)
    assert profiler.times is not None
    assert profiler.times.active
    trainer.remove_callback(profiler)
    assert not profiler.times.active
    after = {e: [tuple(map(id, entry)) for entry in trainer.bus.channel(e).plan] for e in Event}
    assert after == before


def test_no_directory_is_refused_at_construction() -> None:
    with pytest.raises(ValueError, match=r"Profiler 'Profiler' needs a directory: pass Profiler\(dir=\.\.\.\)"):
        make_trainer(callbacks=[Profiler()])


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"wait": -1}, "Profiler 'Profiler': wait must be an int >= 0, got -1"),
        ({"active": 0}, "Profiler 'Profiler': active must be an int >= 1, got 0 (the steps each trace records"),
        ({"warmup": 1.5}, "Profiler 'Profiler': warmup must be an int >= 0, got 1.5"),
        ({"repeat": -2}, "Profiler 'Profiler': repeat must be an int >= 0, got -2 (0 repeats the cycle"),
        ({"skip_first": True}, "Profiler 'Profiler': skip_first must be an int >= 0, got True"),
        ({"record_shapes": "yes"}, "Profiler 'Profiler': record_shapes must be true or false, got 'yes'"),
        ({"gzip": 1}, "Profiler 'Profiler': gzip must be true or false, got 1"),
        ({"on_error": "ignore"}, "Profiler 'Profiler': on_error must be one of 'disable', 'warn', 'raise'"),
    ],
)
def test_bad_options_are_refused_clearly(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match="^" + re.escape(message)):
        Profiler(**options)


def test_a_trace_that_cannot_be_written_disables_the_profiler_and_training_goes_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the profile folder would be\n")
    console, _ = plain_console()
    profiler = Profiler(blocked, wait=0, warmup=1, active=1, repeat=0, console=console)
    trainer = make_trainer(items=12, batch_size=2, max_epochs=1, callbacks=[profiler])
    assert trainer.train() == Status.COMPLETED
    assert profiler.traces == {}
    assert trainer.state.failed_writes == {"Profiler": 1}  # the trace; disabled after it, the table is not tried
    (warning,) = [r.getMessage() for r in caplog.records if r.name == "stepbus.profiler"]
    assert warning.startswith(f"Profiler 'Profiler' could not write a profiler trace in {blocked}: FileExistsError")
    assert warning.endswith("the logger is disabled, training goes on")
    assert blocked.read_text() == "a file where the profile folder would be\n"


def test_on_error_raise_fails_the_run_naming_the_profiler(tmp_path: Path) -> None:
    blocked = tmp_path / "blocked"
    blocked.write_text("")
    console, _ = plain_console()
    profiler = Profiler(blocked, wait=0, warmup=1, active=1, on_error="raise", console=console)
    trainer = make_trainer(items=12, batch_size=2, max_epochs=1, callbacks=[profiler])
    with pytest.raises(CallbackError) as caught:
        trainer.train()
    assert caught.value.handler == "Profiler.post_step"
    assert isinstance(caught.value.__cause__, FileExistsError)
    assert trainer.status == Status.FAILED
