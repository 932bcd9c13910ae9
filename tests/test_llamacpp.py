"""The embedded model's seam, without loading weights."""

from __future__ import annotations

from langchain_core.messages import AIMessage, HumanMessage, SystemMessage

from loopsim.chat.llamacpp import to_llama_messages


def test_gemma_keeps_the_system_prompt_by_folding_it_into_the_first_user_turn():
    messages = [
        SystemMessage("You are Dr. Okafor."),
        HumanMessage("The log."),
        AIMessage("{bad}"),
        HumanMessage("Try again."),
    ]
    assert to_llama_messages(messages, "gemma") == [
        {"role": "user", "content": "You are Dr. Okafor.\n\nThe log."},
        {"role": "assistant", "content": "{bad}"},
        {"role": "user", "content": "Try again."},
    ]


def test_formats_with_a_system_role_are_left_alone():
    messages = [SystemMessage("Persona."), HumanMessage("Log.")]
    assert [m["role"] for m in to_llama_messages(messages, "chatml")] == ["system", "user"]
