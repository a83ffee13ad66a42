"""``python -m benchmarks``: every case, one markdown report (``benchmarks/results.md``), ratios as the headline.

Cases (``--case`` picks some; default all): ``overhead`` (engine overhead against raw PyTorch, Ignite and Lightning),
``scaling`` (cost as callbacks are added and fire), ``end-to-end`` (the reference app to a PSNR target against a
hand-written loop), ``memory`` (RSS and tracemalloc over 10^5 iterations), ``logging`` (a log point's cost on the
training thread, with each logger's writes made there and on its own thread). ``--quick`` runs each at a tiny size (the
smoke test does) and writes only where ``--out`` says. Installs nothing: the peers come from ``stepbus[bench]``.
The checkpoint and GUI costs have their own entry points (``python -m benchmarks.checkpoint``,
``python -m benchmarks.gui``).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from benchmarks import image_field, logging_thread, memory, overhead, scaling

RESULTS = Path(__file__).with_name("results.md")
CASES = ("overhead", "scaling", "end-to-end", "memory", "logging")


def _cases(quick: bool, repeats: int | None) -> dict[str, Callable[[], str]]:
    if quick:
        return {
            "overhead": lambda: overhead.report(200, repeats or 1),
            "scaling": lambda: scaling.report(200, repeats or 1),
            "end-to-end": lambda: image_field.report(quick=True),
            "memory": lambda: memory.report(2000, 1000),
            "logging": lambda: logging_thread.report(200, 1),
        }
    return {
        "overhead": lambda: overhead.report(3000, repeats or 10),
        "scaling": lambda: scaling.report(3000, repeats or 10),
        "end-to-end": lambda: image_field.report(quick=False, repeats=repeats or 3),
        "memory": lambda: memory.report(100_000, 50_000),
        "logging": lambda: logging_thread.report(3000, 5),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks", description=__doc__.splitlines()[0] if __doc__ else ""
    )
    parser.add_argument("--case", action="append", choices=CASES, help="run only this case (repeatable)")
    parser.add_argument("--quick", action="store_true", help="every case at a tiny size (a smoke run)")
    parser.add_argument("--repeats", type=int, default=None, help="interleaved repeats (default: per case)")
    parser.add_argument("--out", type=Path, default=None, help=f"markdown report (default {RESULTS})")
    args = parser.parse_args(argv)
    if args.repeats is not None and args.repeats < 1:
        parser.error("--repeats must be >= 1")
    chosen = args.case or list(CASES)
    runners = _cases(args.quick, args.repeats)
    sections = []
    for name in CASES:
        if name not in chosen:
            continue
        started = time.perf_counter()
        section = runners[name]()
        print(section, flush=True)
        print(f"({name}: {time.perf_counter() - started:.0f} s)\n", file=sys.stderr, flush=True)
        sections.append(section)
    report = "# stepbus benchmarks (`python -m benchmarks`)\n\n" + "\n".join(sections)
    if args.out is not None or not args.quick:  # a smoke run leaves the real results alone
        (args.out or RESULTS).write_text(report, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
