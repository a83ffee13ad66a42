"""Docstring markup as plain text and as Markdown (``trainers.cli.rst_inline``)."""

from __future__ import annotations

import pytest

from trainers.cli.rst_inline import code_span, markdown_text, plain_text

CASES = [
    (
        'every ``every`` of wall time (``"0.5s"`` by default)',
        'every every of wall time ("0.5s" by default)',
        'every `every` of wall time (`"0.5s"` by default)',
    ),
    (
        "raise :class:`NonFiniteError`; see :meth:`~callbacks.ema.EMA.average_state_dict` and :mod:`callbacks.weights`",
        "raise NonFiniteError; see average_state_dict and callbacks.weights",
        "raise `NonFiniteError`; see `average_state_dict` and `callbacks.weights`",
    ),
    (
        "**Milestones** (the default), a *fresh* run; 2nd, 4th, ... capture",
        "Milestones (the default), a fresh run; 2nd, 4th, ... capture",
        "**Milestones** (the default), a *fresh* run; 2nd, 4th, ... capture",
    ),
    ("under <run_dir>/tb | a_b", "under <run_dir>/tb | a_b", "under \\<run\\_dir\\>/tb \\| a\\_b"),
    (
        "the `default role` and `a link <https://example.org>`_",
        "the default role and a link",
        "the `default role` and `a link`",
    ),
    ("``<run_dir>/tb``", "<run_dir>/tb", "`<run_dir>/tb`"),
]


@pytest.mark.parametrize(("rst", "plain", "markdown"), CASES)
def test_inline_markup(rst: str, plain: str, markdown: str) -> None:
    assert plain_text(rst) == plain
    assert markdown_text(rst) == markdown


def test_a_code_span_is_fenced_past_the_backticks_it_holds_and_escapes_bars() -> None:
    assert code_span("'50it'") == "`'50it'`"
    assert code_span("a`b") == "``a`b``"
    assert code_span("`x`") == "`` `x` ``"
    assert code_span("a|b") == "`a\\|b`"
