"""Running a docs page's validation block on 2 real ranks (gloo, started by hand): the block runs on the docs' small
trainer with the page's validation set, and each rank reports what it published, its validator's run count and a
reference computation over the whole set on the weights it holds."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.doc_pages import ROOT, Block
from tests.trainers.distributed.ranks import start_ranks, wait_ranks

__all__ = ["run_on_two_ranks"]

#: what each rank runs: ``preamble`` (imports the page's names, ``val_points`` and the reference function), the
#: block, one epoch of training, then the report
_SCRIPT = r"""
import json, sys
from pathlib import Path

{preamble}
from tests.doc_checks import small_trainer

out = Path(sys.argv[1])
trainer = small_trainer(max_epochs=1)  # starts the group
val_set = val_points()
exec(compile((out / "block.py").read_text(), "block", "exec"))
trainer.train()
report = {{
    "published": {{k: v for k, v in trainer.state.metrics.items() if k.split("/")[0] in ("val", "best")}},
    "count": validator.count,
    "reference": {reference}(trainer.pipeline, val_set),
    "world_size": trainer.world_size,
}}
(out / f"rank-{{trainer.rank}}.json").write_text(json.dumps(report))
trainer.close()
"""


def run_on_two_ranks(block: Block, tmp_path: Path, *, preamble: str, reference: str) -> tuple[Any, Any]:
    """Run ``block`` on ranks 0 and 1 (see the module docstring); both ranks' reports, after both exited 0."""
    (tmp_path / "block.py").write_text(block.text, encoding="utf-8")
    script = _SCRIPT.format(preamble=preamble, reference=reference)
    env = {"OMP_NUM_THREADS": "1", "STEPBUS_DIST_TIMEOUT": "60"}
    processes = start_ranks(["-c", script, str(tmp_path)], ROOT, env=env)
    outputs, _ = wait_ranks(processes, 180)
    assert [p.returncode for p in processes] == [0, 0], "\n".join(outputs)
    zero, one = (json.loads((tmp_path / f"rank-{r}.json").read_text(encoding="utf-8")) for r in (0, 1))
    return zero, one
