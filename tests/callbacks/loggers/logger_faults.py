"""Backend faults for the loggers, run as a script: ``python logger_faults.py SPEC.json`` (see test_logger_faults.py).

Each case runs in a forked child that installs one real fault, then trains a tiny real trainer with a logger:

* ``disk_full``: ``RLIMIT_FSIZE`` caps every file at ``limit`` bytes (SIGXFSZ ignored, so writes fail with ``EFBIG``
  like a full disk) -- the TensorBoard event file outgrows it mid-run.
* ``read_only``: the child drops root (uid/gid 65534) after opening the directory, so ``chmod 0o555`` is really
  enforced, then logs into it (paths relative to it, via ``fchdir``: no parent directory has to be searchable).

The child writes what it saw (status, the logger's ``disabled``/``failures``, the warnings on the ``stepbus.*``
loggers, or the error) as JSON to a note opened before any fault, and exits 0; the parent records how each child
ended in the report.
"""

from __future__ import annotations

import json
import logging
import os
import resource
import signal
import sys
import traceback
from pathlib import Path
from typing import Any

import torch

from callbacks import TensorBoardLogger, WandbLogger
from tests.support import make_trainer
from trainers import BaseTrainer


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(f"{record.name}: {record.getMessage()}")


def _trainer(logger: Any) -> BaseTrainer:
    """The shared tiny trainer, long enough (6 epochs of 32 steps) for an event file to outgrow the limit."""
    return make_trainer(
        64,
        batch_size=2,
        max_epochs=6,
        optimizer=lambda p: torch.optim.SGD(p, lr=0.01),
        callbacks=[logger],
    )


def _logger(case: dict[str, Any]) -> Any:
    if case["logger"] == "tensorboard":
        return TensorBoardLogger(dir=case["log_dir"], every="1it", on_error=case["on_error"])
    settings = {"x_disable_stats": True}
    return WandbLogger(dir=case["log_dir"], every="1it", on_error=case["on_error"], settings=settings)


def _child(case: dict[str, Any], out: Any) -> None:
    collect = _Collect()
    logging.getLogger("stepbus").addHandler(collect)
    result: dict[str, Any] = {}
    try:
        if case["kind"] == "disk_full":
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            _, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
            os.chdir(case["dir"])
            logger = _logger(case)
            trainer = _trainer(logger)
            resource.setrlimit(resource.RLIMIT_FSIZE, (case["limit"], hard))
        else:
            folder = os.open(case["dir"], os.O_RDONLY)
            logger = _logger(case)
            trainer = _trainer(logger)
            # what the run imports lazily, imported as root: the interpreter's files are not readable by uid 65534
            import wandb  # noqa: F401
            from torch.utils.tensorboard import SummaryWriter  # noqa: F401

            if os.geteuid() == 0:
                os.setgroups([])
                os.setgid(65534)
                os.setuid(65534)
            os.fchdir(folder)
            result["euid"] = os.geteuid()
        try:
            status = trainer.train()
            result["status"] = str(status)
        except Exception as exc:  # noqa: BLE001 - the case reports what escaped training
            result["error"] = f"{type(exc).__name__}: {exc}"
            result["status"] = str(trainer.status)
        result.update(iteration=trainer.state.iteration, disabled=logger.disabled, failures=logger.failures)
    except Exception:  # noqa: BLE001
        result["crash"] = traceback.format_exc()
    result["warnings"] = collect.messages
    out.write(json.dumps(result))
    out.close()


def main(spec_file: str) -> int:
    spec = json.loads(Path(spec_file).read_text())
    report: dict[str, Any] = {}
    for case in spec["cases"]:
        out = Path(case["note"]).open("w")  # noqa: SIM115 - opened as root, before any fault; the child closes it
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            code = 0
            try:
                _child(case, out)
            except BaseException:  # noqa: BLE001
                code = 3
            finally:
                os._exit(code)
        out.close()
        _, status = os.waitpid(pid, 0)
        report[case["name"]] = {"exit": os.waitstatus_to_exitcode(status)}
    Path(spec["report"]).write_text(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
