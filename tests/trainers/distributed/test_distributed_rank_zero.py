"""``trainer.on_rank_zero``: rank 0 does the work, every rank gets the result -- and when rank 0 fails, every rank
raises (rank 0 its own error, the others one that names rank 0 and says what failed), and the ranks stay in step
for the next collective. Exercised directly and through its three users: validation, checkpoint saving and
resuming, and the Checkpointer's directory check. 2 real ranks on gloo."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.support import make_trainer
from tests.trainers.distributed.ranks import start_ranks, wait_ranks

WORKER = r"""
import json, sys
from pathlib import Path

from callbacks import Checkpointer, Validator
from tests.support import make_trainer

out = Path(sys.argv[1])
trainer = make_trainer(items=8, batch_size=4, max_epochs=1)  # starts the group
rank = trainer.rank
report = {"out": str(out)}


def outcome(call):
    try:
        return ["ok", call()]
    except Exception as exc:
        return [type(exc).__name__, str(exc)]


def in_step():
    return trainer.all_gather_object(rank)


def boom():
    raise ValueError(f"boom on rank {trainer.rank}")


def bad_metric(t):
    raise ValueError(f"no metric on rank {t.rank}")


report["value"] = outcome(lambda: trainer.on_rank_zero(lambda: {"rank": trainer.rank, "items": [1, 2]}))
report["default"] = outcome(lambda: trainer.on_rank_zero(boom))
report["custom"] = outcome(
    lambda: trainer.on_rank_zero(boom, elsewhere=lambda f: KeyError(f"{f.kind}|{f.message}|{f.reason}"))
)
report["in_step_1"] = in_step()
report["save"] = outcome(lambda: str(trainer.save_checkpoint(out / "blocker" / "c.pt")))
report["in_step_2"] = in_step()
report["resume"] = outcome(lambda: str(trainer.restore(out / "missing.pt")))
report["in_step_3"] = in_step()
validator = trainer.add_callback(Validator(fn=bad_metric, at_end=False))
report["validate"] = outcome(lambda: validator.run(trainer))
report["in_step_4"] = in_step()
trainer.close()

second = make_trainer(items=8, batch_size=4, max_epochs=1, callbacks=[Checkpointer(out / "taken")])
report["refused"] = outcome(lambda: str(second.train()))
report["refused_events"] = second.state.iteration, second.status, second.phase.value
report["in_step_5"] = second.all_gather_object(rank)
second.close()
(out / f"rank-{rank}.json").write_text(json.dumps(report), encoding="utf-8")
"""


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    out = tmp_path_factory.mktemp("rank_zero")
    (out / "blocker").write_text("a file where the checkpoint directory should be", encoding="utf-8")
    earlier = make_trainer(items=8, batch_size=4, max_epochs=1)
    earlier.train()
    earlier.save_checkpoint(out / "taken" / "step-00000002.pt")  # another run's checkpoint: the directory is taken
    processes = start_ranks(["-c", WORKER, str(out)], out, env={"OMP_NUM_THREADS": "1"})
    outputs, _ = wait_ranks(processes, 120)
    assert [p.returncode for p in processes] == [0, 0], "\n".join(outputs)
    return [json.loads((out / f"rank-{r}.json").read_text(encoding="utf-8")) for r in (0, 1)]


def test_rank_zeros_result_reaches_every_rank(ranks: list[dict[str, Any]]) -> None:
    for report in ranks:
        assert report["value"] == ["ok", {"rank": 0, "items": [1, 2]}]
        assert [report[f"in_step_{n}"] for n in range(1, 6)] == [[0, 1]] * 5  # no collective left unmatched


def test_a_failure_on_rank_zero_is_raised_on_every_rank(ranks: list[dict[str, Any]]) -> None:
    zero, one = ranks
    assert zero["default"] == zero["custom"] == ["ValueError", "boom on rank 0"]  # rank 0: its own error
    assert one["default"] == ["RuntimeError", "boom failed on rank 0: ValueError: boom on rank 0"]
    assert one["custom"] == ["KeyError", "'ValueError|boom on rank 0|None'"]


def test_a_save_that_fails_on_rank_zero_fails_on_every_rank(ranks: list[dict[str, Any]]) -> None:
    zero, one = ranks
    out = zero["out"]
    message = f"checkpoint {out}/blocker/c.pt: could not be written: {out}/blocker is a file, not a directory"
    assert zero["save"] == ["CheckpointError", message]
    assert one["save"] == ["CheckpointError", f"{message} (rank 0 writes the checkpoints)"]


def test_a_resume_that_fails_on_rank_zero_fails_on_every_rank(ranks: list[dict[str, Any]]) -> None:
    zero, one = ranks
    path = f"{zero['out']}/missing.pt"
    assert zero["resume"] == ["CheckpointError", f"checkpoint {path}: no such file"]
    assert one["resume"] == ["CheckpointError", f"checkpoint {path}: rank 0 could not resume from it: no such file"]


def test_a_validation_that_fails_on_rank_zero_fails_on_every_rank(ranks: list[dict[str, Any]]) -> None:
    zero, one = ranks
    assert zero["validate"] == ["ValueError", "no metric on rank 0"]  # the validate fn ran on rank 0 only
    message = "Validator 'Validator': validation failed on rank 0: ValueError: no metric on rank 0"
    assert one["validate"] == ["RuntimeError", message]


def test_a_checkpoint_directory_refused_on_rank_zero_is_refused_on_every_rank(ranks: list[dict[str, Any]]) -> None:
    zero, one = ranks
    kind, message = zero["refused"]
    assert kind == "EarlierRunCheckpoints"  # refused as the run started, before any event, on both ranks alike
    assert message.startswith(f"checkpoint {zero['out']}/taken: holds 1 checkpoint(s) of an earlier run")
    assert one["refused"] == zero["refused"]
    assert zero["refused_events"] == one["refused_events"] == [0, None, "idle"]  # nothing ran
