"""Tool formats: which one a model gets, how tools and tool turns are rendered, and the grammar calls are decoded
under (checked with llguidance on real tokenizers: the tiny model's, and one with Qwen's tags as added tokens)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tokenizers import AddedToken, Tokenizer

from ember.bus.messages import ToolChoice
from ember.runtimes.text.grammar import GrammarCompiler
from ember.runtimes.text.tokenizer import TextTokenizer
from ember.runtimes.text.tool_format import (
    DEFAULT_SYSTEM,
    HERMES,
    LLAMA3,
    MAX_CALLS,
    PLAIN_JSON,
    RESULT_GUIDANCE,
    SYSTEM_GUIDANCE,
    TOOL_GUIDANCE,
    ToolFormat,
    choose_format,
)
from tests.helpers.tiny_checkpoint import tiny_tokenizer_json

TOOL = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {}}}}
ADD = {
    "type": "function",
    "function": {
        "name": "add",
        "parameters": {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]},
    },
}
TOOLS = [TOOL, ADD]
CALL = '{"name": "add", "arguments": {"a": 1}}'
OTHER = '{"name": "get_weather", "arguments": {}}'


@pytest.fixture(scope="module")
def plain(tiny_model: Path) -> GrammarCompiler:
    tok = TextTokenizer.from_dir(tiny_model)
    return GrammarCompiler(tok, tok.vocab_size)


@pytest.fixture(scope="module")
def tagged() -> GrammarCompiler:
    """A vocabulary with ``<tool_call>`` and ``</tool_call>`` as added tokens, as Qwen2.5's has them."""
    tok = Tokenizer.from_str(tiny_tokenizer_json(510))
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in ("<tool_call>", "</tool_call>")])
    text = TextTokenizer(tok, eos_token_ids=[2])
    return GrammarCompiler(text, text.vocab_size)


def accepts(compiler: GrammarCompiler, grammar: str, reply: str | list[int]) -> bool:
    """Whether ``reply`` (text, tokenized as the model would write it, or token ids) is a whole reply the grammar
    allows."""
    ids = compiler._tokenizer.encode(reply, add_special_tokens=False) if isinstance(reply, str) else reply
    matcher = compiler.matcher(grammar)
    return matcher.validate_tokens(ids) == len(ids) and matcher.consume_tokens(ids) and matcher.is_accepting()


def hermes(*calls: str) -> str:
    return "\n".join(f"<tool_call>\n{c}\n</tool_call>" for c in calls)


def test_auto_is_a_text_answer_or_calls_from_the_first_token(tagged: GrammarCompiler) -> None:
    grammar = HERMES.grammar(TOOLS, ToolChoice(mode="auto"), True, tagged.special(["<tool_call>", "</tool_call>"]))
    assert accepts(tagged, grammar, "The answer is 4.") and accepts(tagged, grammar, "a <tool or x")
    assert accepts(tagged, grammar, hermes(CALL)) and accepts(tagged, grammar, hermes(CALL, OTHER))
    assert not accepts(tagged, grammar, "Let me check. " + hermes(CALL))  # text, then a call: neither
    assert not accepts(tagged, grammar, "\n" + hermes(CALL))
    assert not accepts(tagged, grammar, hermes(CALL) + "\nDone.")
    # A reply that starts with "{" is calls without their tags (as small Qwen models write them under auto).
    assert accepts(tagged, grammar, CALL) and accepts(tagged, grammar, f"{CALL}\n{OTHER}")
    assert not accepts(tagged, grammar, '{"answer": 4}') and not accepts(tagged, grammar, f"{CALL}\nDone.")
    assert accepts(tagged, grammar, f"```json\n{CALL}\n{OTHER}\n```")  # or in a JSON code block
    assert not accepts(tagged, grammar, '```json\n{"answer": 4}\n```')
    assert accepts(tagged, grammar, "```python\nprint(4)\n```")
    required = HERMES.grammar(TOOLS, ToolChoice(mode="required"), True, tagged.special(["<tool_call>", "</tool_call>"]))
    assert accepts(tagged, required, CALL) and not accepts(tagged, required, "The answer is 4.")


def test_the_answer_grammar_is_text_and_never_a_call(tagged: GrammarCompiler) -> None:
    grammar = HERMES.text_grammar()
    assert accepts(tagged, grammar, "It is 31 degrees and clear in Madrid.")
    for call in (hermes(CALL), CALL, f"```json\n{CALL}\n```", "Sure. " + hermes(CALL)):
        assert not accepts(tagged, grammar, call)
    # Nor the template's markup or a code block around the result: an answer in words.
    for echo in ('<tool_response>\n{"t": 31}\n</tool_response>', "```python\nprint(31)\n```"):
        assert not accepts(tagged, grammar, echo)
    auto = HERMES.grammar(TOOLS, ToolChoice(mode="auto"), True, tagged.special(["<tool_call>", "</tool_call>"]))
    assert not accepts(tagged, auto, "<tools></tools>") and accepts(tagged, auto, "<b>bold</b> text")
    assert not accepts(tagged, auto, f"<{CALL}>") and accepts(tagged, auto, "<!DOCTYPE html>")


def test_hermes_tags_are_the_vocabulary_tokens_and_the_layout_is_the_template_one(tagged: GrammarCompiler) -> None:
    special = tagged.special(["<tool_call>", "</tool_call>", "<tool"])
    assert special == {"<tool_call>", "</tool_call>"}
    grammar = HERMES.grammar(TOOLS, ToolChoice(mode="required"), True, special)
    ids = tagged._tokenizer.encode(hermes(CALL), add_special_tokens=False)
    assert ids[0] == 510 and ids[-1] == 511 and accepts(tagged, grammar, ids)
    spelled = tagged._tokenizer.encode("<tool_call", add_special_tokens=False) + ids[1:]  # "<", "tool", ... ">"
    assert not accepts(tagged, grammar, [*spelled, ids[-1]])
    assert not accepts(tagged, grammar, f"<tool_call>{CALL}</tool_call>")  # Qwen writes a newline inside the tags
    # Whitespace inside a call is the one layout: no runs of spaces or newlines for a weak model to loop on.
    assert not accepts(tagged, grammar, hermes('{"name": "add", "arguments": { "a": 1}}'))
    assert not accepts(tagged, grammar, hermes('{"name": "add", "arguments": {"a":1}}'))


def test_arguments_are_strict(plain: GrammarCompiler) -> None:
    grammar = PLAIN_JSON.grammar(TOOLS, ToolChoice(mode="required"), True)
    assert accepts(plain, grammar, '<tool_call>{"name": "add", "arguments": {"a": 1}}</tool_call>')
    # A property the schema does not name, or an integer past the cap: refused.
    assert not accepts(plain, grammar, '<tool_call>{"name": "add", "arguments": {"a": 1, "b": 2}}</tool_call>')
    assert not accepts(plain, grammar, '<tool_call>{"name": "add", "arguments": {"a": 12345678901234567}}</tool_call>')


def test_a_named_function_is_exactly_one_call(plain: GrammarCompiler) -> None:
    grammar = PLAIN_JSON.grammar(TOOLS, ToolChoice(mode="function", name="add"), True)
    one = f"<tool_call>{CALL}</tool_call>"
    assert accepts(plain, grammar, one)
    assert not accepts(plain, grammar, f"{one}\n{one}")
    assert not accepts(plain, grammar, f"<tool_call>{OTHER}</tool_call>")


@pytest.mark.parametrize("fmt", [PLAIN_JSON, HERMES])
def test_parallel_calls_are_bounded_and_off_means_one(plain: GrammarCompiler, fmt: ToolFormat) -> None:
    def calls(n: int) -> str:
        return "\n".join(f"{fmt.open}{fmt.pad}{CALL}{fmt.pad}{fmt.close}" for _ in range(n))

    grammar = fmt.grammar(TOOLS, ToolChoice(mode="required"), True)
    assert accepts(plain, grammar, calls(2)) and accepts(plain, grammar, calls(MAX_CALLS))
    assert not accepts(plain, grammar, calls(MAX_CALLS + 1))
    single = fmt.grammar(TOOLS, ToolChoice(mode="required"), False)
    assert accepts(plain, single, calls(1)) and not accepts(plain, single, calls(2))


def test_bare_json_formats_under_auto(plain: GrammarCompiler) -> None:
    grammar = LLAMA3.grammar(TOOLS, ToolChoice(mode="auto"), True)
    assert accepts(plain, grammar, '{"name": "add", "parameters": {"a": 1}}')
    assert accepts(plain, grammar, "Hello there")
    assert not accepts(
        plain, grammar, '{"name": "add", "parameters": {"a": 1}}\n{"name": "add", "parameters": {"a": 1}}'
    )


def test_the_format_is_chosen_from_the_chat_template() -> None:
    qwen_like = "{% if tools %}...<tool_call>...{% endif %}"
    llama_like = "{% if tools %}...<|python_tag|>...{% endif %}"
    assert choose_format(qwen_like) is HERMES
    assert choose_format(llama_like) is LLAMA3
    assert choose_format("{{ messages }}") is PLAIN_JSON
    assert choose_format(None) is PLAIN_JSON
    assert choose_format(qwen_like, "json") is PLAIN_JSON  # the config's override wins


def test_plain_format_renders_tools_calls_and_results_as_text_turns(tiny_model: Path) -> None:
    tok = TextTokenizer.from_dir(tiny_model)
    messages = [
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "P"}'}}
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": '{"temp": 21}'},
    ]
    rendered, tools = PLAIN_JSON.template_inputs(messages, [TOOL])
    assert tools is None
    prompt = tok.apply_chat_template(rendered)
    assert prompt.startswith("<|im_start|>system\nYou can call these functions:\n" + json.dumps(TOOL["function"]))
    assert '<|im_start|>assistant\n<tool_call>{"name": "get_weather", "arguments": {"city": "P"}}</tool_call>' in prompt
    assert '<|im_start|>user\n<tool_response>\n{"temp": 21}\n</tool_response><|im_end|>' in prompt


def test_native_formats_get_arguments_as_objects() -> None:
    messages = [{"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": '{"x": 1}'}}]}]
    rendered, tools = HERMES.template_inputs(messages, [TOOL])
    assert rendered[0]["tool_calls"][0]["function"]["arguments"] == {"x": 1} and tools == [TOOL]


def test_auto_guidance_is_a_system_turn_after_the_tools_and_after_results_in_hermes() -> None:
    ask = [{"role": "user", "content": "Who wrote Emma?"}]
    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    answered = [
        *ask,
        {"role": "assistant", "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "c1", "content": "1"},
    ]
    system = {"role": "system", "content": "Be brief."}

    guided = HERMES.with_guidance(ask)
    assert guided == [
        {"role": "system", "content": DEFAULT_SYSTEM},
        {"role": "system", "content": TOOL_GUIDANCE},
        *ask,
    ]
    assert HERMES.with_guidance([system, *ask]) == [system, {"role": "system", "content": TOOL_GUIDANCE}, *ask]
    # On the turn after the results: the same prefix (its cache entries serve this turn), and one more turn last.
    after = HERMES.with_guidance(answered)
    assert after[: len(guided)] == guided and after[-1] == {"role": "system", "content": RESULT_GUIDANCE}
    assert after[len(guided) : -1] == answered[1:]

    # Formats whose templates may take one system turn only: at the end of it.
    for fmt in (PLAIN_JSON, LLAMA3):
        assert fmt.with_guidance([system, *ask]) == [
            {"role": "system", "content": f"Be brief.\n\n{SYSTEM_GUIDANCE}"},
            *ask,
        ]
        assert fmt.with_guidance(answered)[0]["content"].endswith(SYSTEM_GUIDANCE)
