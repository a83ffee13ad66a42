"""An extra brings what its callbacks need, and only that: the wheel installed into a fresh virtual environment
with ``[tensorboard]`` alone trains with a ``TensorBoardLogger`` whose validator returns images.

``torch.utils.tensorboard``'s ``add_image`` imports PIL, which torch does not install (nor do the older tensorboard
releases the extra allows): without it the logger's first image write would fail and disable it. So the run there must
keep its logger enabled with no failed write, and its event file -- read in that environment with tensorboard's own
reader -- must hold every image with the very pixels the validator returned (decoded with Pillow). And the other way:
wandb and mlflow, which other extras bring, cannot be imported there, and a ``WandbLogger`` is refused with the install
command of its extra.

The wheel is built and the environment set up as tests/test_wheel.py does (its fixtures and helpers are reused):
one fresh venv, torch pinned as the Makefile pins it, installed from pip's own configuration.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

from tests.test_wheel import PACKAGES, Dist, _run, _torch_pin, dist, venv  # noqa: F401  (fixtures, used by name)

ROOT = Path(__file__).resolve().parents[1]

#: run with the fresh environment's Python, in a folder outside the checkout, beside a copy of tests/tb_events.py
SCRIPT = """\
import importlib.metadata, importlib.util, io, json, sys
from pathlib import Path

import numpy
import torch
from PIL import Image
from torch import nn

import callbacks, lifecycle, trainers
from callbacks import TensorBoardLogger, Validator
from trainers import BaseTrainer
from tb_events import events

run_dir = Path(sys.argv[1])
x = torch.randn(64, 2, generator=torch.Generator().manual_seed(0))
y = x.sum(dim=1, keepdim=True)
picture = torch.arange(4 * 5 * 3, dtype=torch.uint8).reshape(4, 5, 3) * 4  # H=4, W=5, RGB


def validate(trainer):
    mse = nn.functional.mse_loss(trainer.pipeline(x), y)
    return {"mse": mse, "images": {"rgb": picture + trainer.state.epoch}}  # a different image each epoch


def mse(model, batch):
    return nn.functional.mse_loss(model(batch[0]), batch[1])


logger = TensorBoardLogger(every="4it")
trainer = BaseTrainer(nn.Linear(2, 1), torch.utils.data.TensorDataset(x, y), max_epochs=2, batch_size=8,
                      device="cpu", loss_fn=mse, run_dir=run_dir, callbacks=[Validator(validate), logger])
status = trainer.train()

found = events(run_dir / "tb")
images = {}
for tag in found.Tags()["images"]:
    for event in found.Images(tag):
        decoded = numpy.asarray(Image.open(io.BytesIO(event.encoded_image_string)))
        expected = (picture + event.step // 8).numpy()  # the epoch of that validation (8 steps an epoch)
        images.setdefault(tag, []).append([event.step, event.width, event.height, bool((decoded == expected).all())])

missing = {}
for name in ("wandb", "mlflow"):
    try:
        importlib.import_module(name)
    except ModuleNotFoundError as error:
        missing[name] = error.name
try:
    from callbacks import WandbLogger

    BaseTrainer(nn.Linear(2, 1), torch.utils.data.TensorDataset(x, y), max_epochs=1, batch_size=8, device="cpu",
                loss_fn=mse, callbacks=[WandbLogger()])
    refused = None
except ModuleNotFoundError as error:
    refused = str(error)

print(json.dumps({
    "status": str(status),
    "disabled": logger.disabled,
    "failures": logger.failures,
    "failed_writes": dict(trainer.state.failed_writes),
    "images": images,
    "scalars": sorted(found.Tags()["scalars"]),
    "missing": missing,
    "refused": refused,
    "files": [module.__file__ for module in (lifecycle, callbacks, trainers)],
    "pillow": importlib.metadata.version("pillow"),
    "extra": [r.split(";")[0] for r in importlib.metadata.requires("stepbus") if 'extra == "tensorboard"' in r],
}))
"""


@pytest.mark.slow
def test_the_tensorboard_extra_alone_brings_pillow_and_logs_validation_images(
    dist: Dist,  # noqa: F811  (the imported fixture)
    venv: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    python = venv / "bin" / "python"
    _run([sys.executable, "-m", "venv", str(venv)], tmp_path, 120)
    _run([str(python), "-m", "pip", "install", "--quiet", _torch_pin()], tmp_path, 600)
    _run([str(python), "-m", "pip", "install", "--quiet", f"{dist.wheel}[tensorboard]"], tmp_path, 600)

    work = tmp_path / "work"
    work.mkdir()
    shutil.copy(ROOT / "tests" / "tb_events.py", work / "tb_events.py")
    (work / "check_extra.py").write_text(SCRIPT, encoding="utf-8")
    result = _run([str(python), "check_extra.py", str(work / "run")], work, 300)
    seen = json.loads(result.stdout.splitlines()[-1])

    # stepbus there is the installed wheel, not this checkout
    site = venv / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
    assert seen["files"] == [str(site / package / "__init__.py") for package in PACKAGES]
    # the logger wrote everything: never disabled, no failed write, an image per validation with its own pixels
    assert seen["status"] == "completed"
    assert (seen["disabled"], seen["failures"], seen["failed_writes"]) == (False, 0, {})
    assert seen["images"] == {"val/rgb": [[8, 5, 4, True], [16, 5, 4, True]]}
    assert {"train/loss", "val/mse", "best/mse"} <= set(seen["scalars"])
    assert "disabled" not in result.stderr
    # the extra, as the installed wheel's metadata lists it, and the Pillow it brought
    assert seen["extra"] == ["tensorboard>=2.14", "pillow>=10", "numpy"]
    assert int(seen["pillow"].split(".")[0]) >= 10
    # and only that extra came in
    assert seen["missing"] == {"wandb": "wandb", "mlflow": "mlflow"}
    assert seen["refused"].startswith("WandbLogger")
    assert 'pip install "wandb>=0.17" "pillow>=10" "numpy"' in seen["refused"]
