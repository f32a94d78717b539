"""The orchestrator's pure parts: attachments, the schema a model sees, tool names, and result summaries."""

from __future__ import annotations

from typing import Any, cast

from ember.bus.messages import FunctionInfo, ToolChoice
from ember.functions.builtins import builtin_functions
from ember.functions.registry import info
from ember.gateway.orchestrator import Orchestration, Plan, extract_attachments, model_schema, summary, tool_name
from ember.gateway.schemas import Message, TextPart
from ember.gateway.tool_calls import ToolCall


def builtin(name: str) -> FunctionInfo:
    return next(info(d) for d in builtin_functions() if d.name == name)


def test_audio_parts_become_named_attachments() -> None:
    messages = [
        Message(role="system", content="Be brief."),
        Message.model_validate(
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What do these say? "},
                    {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}},
                    {"type": "input_audio", "input_audio": {"data": "BBBB", "format": "mp3"}},
                ],
            }
        ),
    ]
    out, attachments = extract_attachments(messages)
    assert attachments == {"audio_1": "data:audio/wav;base64,AAAA", "audio_2": "data:audio/mp3;base64,BBBB"}
    assert out[0] is messages[0]
    assert out[1].text() == (
        "What do these say? [audio_1: an attached audio clip, not yet transcribed]"
        "[audio_2: an attached audio clip, not yet transcribed]"
    )
    assert all(isinstance(p, TextPart) for p in out[1].content or [])


def test_the_model_sees_only_what_it_may_choose() -> None:
    schema = model_schema(builtin("transcribe_audio"), {"audio_2": "x", "audio_1": "y"})
    assert schema["properties"] == {
        "audio": {"type": "string", "enum": ["audio_1", "audio_2"], "description": "an attached clip's name"}
    }
    assert schema["required"] == ["audio"] and schema["additionalProperties"] is False
    image = model_schema(builtin("generate_image"), {})
    assert list(image["properties"]) == ["prompt"]
    assert "x-ember-model-hidden" not in str(image)
    # Without attachments the parameter stays what it is (base64 text), minus our marker.
    bare = model_schema(builtin("transcribe_audio"), {})
    assert bare["properties"]["audio"]["type"] == "string" and "x-ember-attachment" not in bare["properties"]["audio"]
    # The declaration itself is untouched.
    assert "x-ember-attachment" in builtin("transcribe_audio").input_schema["properties"]["audio"]


def test_tool_names_and_summaries() -> None:
    assert tool_name("my_funcs.lookup_order") == "my_funcs__lookup_order"
    assert tool_name("generate_image") == "generate_image"
    big = {"images": [{"b64_png": "x" * 5000, "seed": 3}], "model": "m"}
    assert summary(big) == {"images": [{"b64_png": "<5000 characters, omitted>", "seed": 3}], "model": "m"}
    assert summary("short") == "short" and summary(7) == 7


async def test_a_call_outside_the_allow_list_is_an_error_result_and_never_runs() -> None:
    """The grammar offers the model only the named functions; the loop refuses anything else regardless."""
    plan = Plan(
        functions={"chat": builtin("chat")},
        tools=(),
        choices=[],
        default=ToolChoice(),
        max_steps=2,
        attachments={},
        messages=[],
    )
    # No request, body or caller: a refused call must not get as far as needing them.
    o = Orchestration(request=cast(Any, None), body=cast(Any, None), plan=plan, caller=cast(Any, None))
    record = await o._run(0, ToolCall(id="call_1", name="generate_image", arguments='{"prompt": "x"}'))
    assert record["status"] == "error" and record["output"] is None
    assert record["error"]["code"] == "function_not_allowed"
    assert record["arguments"] == {"prompt": "x"} and record["name"] == "generate_image"
