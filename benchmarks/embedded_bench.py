"""One embedded day against raw llama-cpp-python generating the same tokens.

Steps a run on the embedded Gemma 270M model (after a warm-up day that loads the
weights), then replays every model call of each day, the warm-up day untimed, through a
second, separately loaded ``llama_cpp.Llama`` with the same messages, grammar, sampling
settings and seed, and checks that it produced the same text. Both sides thus see the
same prompts in the same order, so llama.cpp's reuse of a cached prompt prefix helps
both alike. The overhead is loopsim's day (view, prompt,
validation, transaction, chain hashes, call records) over the raw calls alone.

    python benchmarks/embedded_bench.py [--days 4]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from langchain_core.messages import AIMessage, HumanMessage, SystemMessage
from sqlalchemy import select

from loopsim.chat.handle import build_chat
from loopsim.chat.llamacpp import resolve_gguf, schema_grammar, to_llama_messages
from loopsim.config import Settings
from loopsim.loop import Loop
from loopsim.record import db as dbmod
from loopsim.record.store import Store
from loopsim.record.tables import CallRecord, Day
from loopsim.researcher.conversation import grammar_schema, seed_of
from loopsim.researcher.prompts import Prompt
from loopsim.schemas import parse_spec

SPEC = parse_spec(
    {
        "persona": {"name": "Dr. Bench", "background": "A field ecologist who studies bees."},
        "charter": {"agenda": "Understand how honeybee colonies choose where to forage."},
        "time": {"policy": "fixed", "anchor": "2025-06-02"},
        "checkins": {"every_days": 100_000, "spot_check_probability": 0.0},
        "budget": {"output_tokens_per_day": 400},
    }
)
KINDS = {"system": SystemMessage, "user": HumanMessage, "assistant": AIMessage}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--days", type=int, default=4)
    args = parser.parse_args()
    from llama_cpp import Llama

    settings = Settings()
    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "embedded.db")
        dbmod.upgrade(path)
        database = dbmod.Database.open(path)
        with database.write() as session:
            run_id = Store(session).create_run(SPEC, name="bench", model=settings.model).id
        loop = Loop(database, settings, build_chat(settings))
        loop.start(run_id)
        loop.step(run_id)  # warm-up: loads the weights
        ours = []
        for _ in range(args.days):
            began = time.perf_counter()
            loop.step(run_id)
            ours.append(time.perf_counter() - began)
        with database.read() as session:
            days = session.scalars(select(Day).where(Day.run_id == run_id).order_by(Day.index))
            replayed = list(days)  # the warm-up day too: raw gets the same warm cache
            calls = {
                d.index: list(
                    session.scalars(
                        select(CallRecord)
                        .where(CallRecord.day_id == d.id)
                        .order_by(CallRecord.ordinal)
                    )
                )
                for d in replayed
            }
            prompts = {d.index: d.prompt for d in replayed}
            warm_up = replayed[0].index
        database.dispose()

    model_path, _ = resolve_gguf(settings.model.split(":", 1)[1])
    llama = Llama(
        model_path=str(model_path), n_ctx=settings.llama_ctx, chat_format="gemma", verbose=False
    )
    llama.create_chat_completion(messages=[{"role": "user", "content": "Hello."}], max_tokens=4)
    raw, same, total = [], 0, 0
    for index in sorted(calls):  # the warm-up day first, untimed, as on loopsim's side
        prompt = Prompt(tuple((m["role"], m["content"]) for m in prompts[index]))
        began = time.perf_counter()
        for call in calls[index]:
            messages = [KINDS[m["role"]](content=m["content"]) for m in call.messages]
            result = llama.create_chat_completion(
                messages=to_llama_messages(messages, "gemma"),
                grammar=schema_grammar(grammar_schema()),
                temperature=SPEC.model.temperature,
                repeat_penalty=SPEC.model.repeat_penalty,
                max_tokens=SPEC.budget.output_tokens_per_day,
                seed=seed_of(prompt, index) + call.attempt - 1,
            )
            text = result["choices"][0]["message"].get("content") or ""
            if index != warm_up:
                same += text.strip() == call.reply.strip()
                total += 1
        if index != warm_up:
            raw.append(time.perf_counter() - began)
    day_s, raw_s = statistics.median(ours), statistics.median(raw)
    print("| days | loopsim day s (p50) | raw llama-cpp-python s (p50) | ratio | same text |")
    print("|---:|---:|---:|---:|---:|")
    print(f"| {len(ours)} | {day_s:.2f} | {raw_s:.2f} | {day_s / raw_s:.2f}x | {same}/{total} |")


if __name__ == "__main__":
    main()
