"""Prompt templates: a conversation -> the text a model trains on, plus which characters it learns.

`Renderer(template, tokenizer)(messages, meta)` returns a `Rendered`: the full text and the
character spans that are trained (each assistant turn's content and the end-of-turn token that
closes it). Label masks are built from these character spans and the tokenizer's offsets, so the
same code is exact for every template, the tokenizer's own chat template included; matching
token ids of a "response template" is what makes other tools lose or mis-mask tokens.

Templates (`format.template`):
- `alpaca`: the Stanford Alpaca prompt, word for word; `### Input:` when `meta.alpaca_input` is the
  tail of the user turn; a system prompt replaces the Alpaca preamble (it is that template's system
  prompt); later exchanges repeat `### Instruction:` / `### Response:`.
- `chatml`: `<|im_start|>{role}\\n{content}<|im_end|>\\n`; assistant turns end with `<|im_end|>`.
- `chat`: `Human: ...` / `Assistant: ...` separated by blank lines; the space after `Assistant:`
  belongs to the response, so the prompt ends with `Assistant:` and a byte-level tokenizer sees
  the same ` word` token at training and at inference.
- `tokenizer`: the tokenizer's own chat template (`apply_chat_template`). Each assistant turn is
  located by rendering the conversation up to it with the generation prompt; the end-of-turn token
  is the first special token after the content.
Other than `chatml` and `tokenizer`, each assistant turn ends with `tokenizer.eos_token`.
Text records (`meta.kind == "text"`) render as the text + EOS and are trained in full.

Tool calling and reasoning (one trained span per assistant turn, always):
- reasoning: the `tokenizer` template gets it as the message's `reasoning` (transformers passes it
  on as `reasoning_content` and `thinking`) when the chat template reads one of those; other
  templates, and chat templates that read none, show it as `<think>\n{reasoning}\n</think>\n\n`
  before the content (DeepSeek-R1's form). It is trained with the turn unless
  `train_on_reasoning` is false, when the turn's span starts after it.
- tools: `tokenizer` passes the record's `tools` as `tools=` and the turns' `tool_calls` as they
  are; a chat template that reads neither `tools` nor `tool_calls` is refused per record
  (`template_no_tools`). `chatml` renders them Hermes-style (Qwen2.5, NousResearch): the function
  schemas in the system turn (`TOOLS_PROMPT`), each call as `<tool_call>\n{"name", "arguments"}
  \n</tool_call>` after the assistant's content, a result as a `tool` turn. `alpaca` and `chat`
  have no place for them: a record with tools, calls or results is dropped (`template_no_tools`).
- masks: an assistant turn that calls a function is trained through its calls and its
  end-of-turn token (the model must learn to emit them); tool results and the tools prompt are not.
- a chat template with `{% generation %}` blocks (transformers' assistant mask) gives the trained
  spans itself, one block per assistant turn.

`chat_template(template, tokenizer)` is the same template as Jinja, for `apply_chat_template`: the
train stage saves it with the trained model, so the model carries exactly the text it learned.
`end_of_turn(template, tokenizer)` is the token that closes an assistant turn (generation stops
there). `require_control_tokens` refuses chatml on a tokenizer without `<|im_start|>`/`<|im_end|>`
as special tokens (GPT-2): there `<|im_end|>` is several plain-text tokens, and a model trained on
them never stops.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from sftpipe.core.errors import SftpipeError
from sftpipe.core.records import Drop

ALPACA = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request."
)
ALPACA_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further "
    "context. Write a response that appropriately completes the request."
)
IM_START, IM_END = "<|im_start|>", "<|im_end|>"
TOOLS_PROMPT = (
    "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>"
)
TOOLS_PROMPT_END = (
    "\n</tools>\n\nFor each function call, return a json object with function name and arguments "
    'within <tool_call></tool_call> XML tags:\n<tool_call>\n{"name": <function-name>, "arguments": '
    "<args-json-object>}\n</tool_call>"
)
_GENERATION = re.compile(r"\{%-?\s*generation\s*-?%\}")
TEMPLATES = ("alpaca", "chatml", "chat", "tokenizer")
# Private-use characters around a turn number: stand-ins for assistant contents when locating them.
_MARK = ("\ue000", "\ue001")
_MARKER = re.compile(f"{_MARK[0]}(\\d+){_MARK[1]}")


class TemplateError(SftpipeError, ValueError):
    """The chosen template cannot work with this tokenizer (a setting to change, not a record)."""


@dataclass(frozen=True, slots=True)
class Rendered:
    """The full text and its trained character spans `[start, end)`, in order."""

    text: str
    spans: tuple[tuple[int, int], ...]

    @property
    def prompt(self) -> str:
        """Everything before the final assistant turn's trained part."""
        return self.text[: self.spans[-1][0]]

    @property
    def completion(self) -> str:
        """The final assistant turn's trained part: its content and end-of-turn token."""
        start, end = self.spans[-1]
        return self.text[start:end]


class _Builder:
    """Concatenates pieces, remembering where the trained ones are."""

    __slots__ = ("parts", "size", "spans")

    def __init__(self, start: str = ""):
        self.parts, self.size = [start], len(start)
        self.spans: list[tuple[int, int]] = []

    def add(self, piece: str, trained: bool = False) -> None:
        if trained:
            self.spans.append((self.size, self.size + len(piece)))
        self.parts.append(piece)
        self.size += len(piece)

    def done(self) -> Rendered:
        return Rendered("".join(self.parts), tuple(self.spans))


def _past_space(text: str, at: int, end: int) -> int:
    """The first non-space position from `at` (before `end`): a masked trace's span starts there."""
    while at < end and text[at].isspace():
        at += 1
    return at


def _json(value) -> str:
    """JSON as the Jinja `tojson` filter of transformers writes it (keys in order, no ASCII escapes)."""
    return json.dumps(value, ensure_ascii=False)


def think(reasoning: str) -> str:
    return f"<think>\n{reasoning}\n</think>\n\n"


def calls_block(m: dict) -> str:
    """An assistant turn's calls as Hermes `<tool_call>` blocks, after a newline when it has content."""
    blocks = [
        "<tool_call>\n"
        + _json({"name": c["function"]["name"], "arguments": c["function"]["arguments"]})
        + "\n</tool_call>"
        for c in m.get("tool_calls") or ()
    ]
    return ("\n" if m["content"] and blocks else "") + "\n".join(blocks)


def tools_prompt(tools: list[dict]) -> str:
    return TOOLS_PROMPT + "".join("\n" + _json(t) for t in tools) + TOOLS_PROMPT_END


def _uses_tools(messages: list[dict], tools) -> bool:
    return bool(tools) or any(m["role"] == "tool" or m.get("tool_calls") for m in messages)


def _split_system(messages: list[dict]) -> tuple[str | None, list[dict]]:
    """Leading system turns (joined) and the rest; a system turn later on has no place to go."""
    n = 0
    while n < len(messages) and messages[n]["role"] == "system":
        n += 1
    rest = messages[n:]
    for m in rest:
        if m["role"] not in ("user", "assistant"):
            raise Drop("unsupported_role", f"role {m['role']!r} after the first turn")
    system = "\n\n".join(m["content"] for m in messages[:n]) if n else None
    return system, rest


class Renderer:
    """Renders canonical conversations with one template for one tokenizer."""

    def __init__(self, template: str, tokenizer, bos: str = "", train_on_reasoning: bool = True):
        if template not in TEMPLATES:
            raise TemplateError(
                f"format.template: unknown template {template!r} (have: {', '.join(TEMPLATES)})"
            )
        if not tokenizer.eos_token:
            raise TemplateError("the tokenizer has no eos_token, so assistant turns cannot end")
        self.template, self.tok, self.bos, self.eos = template, tokenizer, bos, tokenizer.eos_token
        self.train_on_reasoning = train_on_reasoning
        self._render = getattr(self, f"_{template}")
        self._direct = None
        self._generation = False
        if template == "tokenizer":
            if not getattr(tokenizer, "chat_template", None):
                raise TemplateError(
                    "format.template: 'tokenizer' needs a chat template, and this tokenizer has none; "
                    "use alpaca, chatml or chat"
                )
            specials = sorted({t for t in _special_tokens(tokenizer) if t}, key=len, reverse=True)
            self._special = re.compile("|".join(map(re.escape, specials)))
            self._direct = _direct_template(tokenizer)
            source = tokenizer.get_chat_template()
            self._generation = bool(_GENERATION.search(source))
            self._reads_reasoning = any(k in source for k in _REASONING)
            self._reads_tools = "tools" in source or "tool_calls" in source
            self._opener, self._eot = self._plain_turn_tokens()

    def __call__(
        self, messages: list[dict], meta: dict | None = None, tools: list[dict] | None = None
    ) -> Rendered:
        meta = meta or {}
        if meta.get("kind") == "text" and len(messages) == 1:
            b = _Builder(self.bos)
            b.add(messages[0]["content"] + self.eos, trained=True)
            return b.done()
        if not any(m["role"] == "assistant" for m in messages):
            raise Drop("no_assistant_turn")
        if messages[-1]["role"] != "assistant":
            raise Drop("ends_without_assistant", f"last turn is {messages[-1]['role']!r}")
        if _uses_tools(messages, tools):
            if self.template in ("alpaca", "chat") or (
                self.template == "tokenizer" and not self._reads_tools
            ):
                where = "the tokenizer's chat template" if self.template == "tokenizer" else self.template
                raise Drop("template_no_tools", f"{where} has no place for tools, tool calls or results")
            return self._render(messages, meta, tools)
        return self._render(messages, meta)

    def _plain_turn_tokens(self) -> tuple[str | None, str | None]:
        """The last special token before a plain assistant turn's content (a sign that a turn
        opens: `<|im_start|>`, Llama 3's `<|end_header_id|>`) and the one that closes it."""
        try:
            text = self._apply(
                [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}], False
            )
        except Drop:
            return None, None
        at = text.rfind("Hello")
        if at < 0:
            return None, None
        before = [hit.group(0) for hit in self._special.finditer(text, 0, at)]
        after = self._special.search(text, at + len("Hello"))
        return (before[-1] if before else None), (after.group(0) if after else None)

    def _reply(self, b: _Builder, m: dict, lead: str, end: str) -> None:
        """An assistant turn's trained part: `lead`, its reasoning as a think block, its content,
        its calls and `end`; one span, which starts after the reasoning when that is not trained."""
        reasoning = m.get("reasoning")
        if reasoning and not self.train_on_reasoning:
            b.add(lead + think(reasoning))
            lead = ""
        elif reasoning:
            lead += think(reasoning)
        b.add(lead + m["content"] + calls_block(m) + end, trained=True)

    def _alpaca(self, messages: list[dict], meta: dict) -> Rendered:
        system, rest = _split_system(messages)
        context = meta.get("alpaca_input")
        first = rest[0]["content"] if rest and rest[0]["role"] == "user" else None
        has_input = (
            isinstance(context, str)
            and bool(context)
            and first is not None
            and first.endswith("\n\n" + context)
        )
        b = _Builder(self.bos)
        b.add(system if system is not None else ALPACA_INPUT if has_input else ALPACA)
        for i, m in enumerate(rest):
            if m["role"] == "user":
                if i == 0 and has_input and first is not None and context:
                    instruction = first[: -len(context) - 2]
                    b.add(f"\n\n### Instruction:\n{instruction}\n\n### Input:\n{context}")
                else:
                    b.add(f"\n\n### Instruction:\n{m['content']}")
            else:
                b.add("\n\n### Response:\n")
                self._reply(b, m, "", self.eos)
        return b.done()

    def _chatml(self, messages: list[dict], meta: dict, tools: list[dict] | None = None) -> Rendered:
        b = _Builder(self.bos)
        if tools:  # the schemas close the system turn, or make one
            prompt = tools_prompt(tools)
            if messages[0]["role"] == "system":
                messages = [
                    {**messages[0], "content": messages[0]["content"] + "\n\n" + prompt},
                    *messages[1:],
                ]
            else:
                messages = [{"role": "system", "content": prompt}, *messages]
        for m in messages:
            b.add(f"{IM_START}{m['role']}\n")
            if m["role"] == "assistant":
                self._reply(b, m, "", IM_END)
            else:
                b.add(m["content"] + IM_END)
            b.add("\n")
        return b.done()

    def _chat(self, messages: list[dict], meta: dict) -> Rendered:
        system, rest = _split_system(messages)
        b = _Builder(self.bos)
        if system is not None:
            b.add(system + "\n\n")
        for i, m in enumerate(rest):
            if i:
                b.add("\n\n")
            if m["role"] == "user":
                b.add(f"Human: {m['content']}")
            else:
                b.add("Assistant:")
                self._reply(b, m, " ", self.eos)
        return b.done()

    def _tokenizer(self, messages: list[dict], meta: dict, tools: list[dict] | None = None) -> Rendered:
        shown, skip = self._shown(messages)
        if self._generation:
            got = self._by_generation(shown, tools)
            if got is not None:
                return got
        text = self._apply(shown, False, tools)
        contents = self._contents_by_markers(shown, text, tools) or self._contents_by_prefixes(
            shown, text, tools
        )
        turns = [i for i, m in enumerate(shown) if m["role"] == "assistant"]
        spans, lo = [], 0
        for i, (start, end) in zip(turns, contents, strict=True):
            m = shown[i]
            if m.get("tool_calls"):
                stop = self._end_of_calls(shown, i, text, end)
            else:
                eot = self._special.search(text, end)
                if eot is None or text[end : eot.start()].strip():
                    raise TemplateError(
                        "format.template: the tokenizer's chat template does not close an assistant turn "
                        "with a special token, so the model would never learn to stop; use chatml, chat or alpaca"
                    )
                stop = eot.end()
            spans.append((self._reasoning_start(m, text, lo, start, skip.get(i, 0)), stop))
            lo = stop
        return Rendered(text, tuple(spans))

    def _end_of_calls(self, messages: list[dict], i: int, text: str, end: int) -> int:
        """Where a turn that calls functions ends: the end-of-turn token after its last call's name
        (the calls come after the content). No turn may open before it (the template closes call
        turns some other way, and the span would train a tool result): a `template_error` then."""
        at = end
        for call in messages[i]["tool_calls"]:
            hit = text.find(call["function"]["name"], at)
            at = hit + len(call["function"]["name"]) if hit >= 0 else at
        eot = text.find(self._eot, at) if self._eot else -1
        if eot < 0 or (self._opener and text.find(self._opener, at, eot) >= 0):
            raise Drop("template_error", f"turn {i}: cannot find where the tool-call turn ends")
        return eot + len(self._eot or "")

    def _shown(self, messages: list[dict]) -> tuple[list[dict], dict[int, int]]:
        """The messages as the chat template gets them: reasoning as a think block in the content
        when the template reads no reasoning field; and, by turn, the length of that block."""
        if self._reads_reasoning or not any(m.get("reasoning") for m in messages):
            return messages, {}
        shown, skip = [], {}
        for i, m in enumerate(messages):
            if m.get("reasoning"):
                block = think(m["reasoning"])
                m = {k: v for k, v in m.items() if k != "reasoning"} | {"content": block + m["content"]}
                skip[i] = len(block)
            shown.append(m)
        return shown, skip

    def _reasoning_start(self, m: dict, text: str, lo: int, start: int, block: int) -> int:
        """Where a turn's trained span starts: at its reasoning (and the `<think>` before it) when
        reasoning is trained, else at its content (past a think block put into the content)."""
        if not self.train_on_reasoning:
            return _past_space(text, start + block, len(text)) if m.get("reasoning") or block else start
        trace = (m.get("reasoning") or "").strip()
        at = text.rfind(trace, lo, start) if trace and not block else -1
        if at < 0:
            return start
        head = text[lo:at].rstrip()
        return lo + len(head) - len("<think>") if head.endswith("<think>") else at

    def _by_generation(self, messages: list[dict], tools) -> Rendered | None:
        """The spans of the template's `{% generation %}` blocks (one per assistant turn), or None
        when the blocks do not match the assistant turns one to one."""
        try:  # where transformers keeps it since 4.52; gone: locate turns by markers instead
            from transformers.utils.chat_template_utils import render_jinja_template
        except ImportError:
            return None
        try:
            got: Any = render_jinja_template(
                [messages], tools=tools, chat_template=self.tok.get_chat_template(),
                return_assistant_tokens_mask=True, **self.tok.special_tokens_map,
            )  # fmt: skip
        except Exception as exc:  # jinja raises its own errors (e.g. "roles must alternate")
            raise Drop("template_error", f"{type(exc).__name__}: {exc}") from None
        text: str = got[0][0]
        blocks: list[tuple[int, int]] = got[1][0]
        reasons = [m.get("reasoning") for m in messages if m["role"] == "assistant"]
        if len(blocks) != len(reasons):
            return None
        spans = []
        for (start, end), trace in zip(blocks, reasons, strict=True):
            if trace and not self.train_on_reasoning:
                at = text.find(trace.strip(), start, end)
                if at >= 0:
                    start = at + len(trace.strip())
                    close = text.find("</think>", start, end)
                    start = _past_space(text, close + len("</think>") if close >= 0 else start, end)
            spans.append((start, end))
        return Rendered(text, tuple(spans))

    def _contents_by_markers(
        self, messages: list[dict], text: str, tools=None
    ) -> list[tuple[int, int]] | None:
        """Where each assistant content is, from one more rendering with a marker in place of each
        (linear in the conversation); None when the template alters contents, so the markers do
        not give back the same text."""
        turns = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
        marked = [
            {**m, "content": f"{_MARK[0]}{i}{_MARK[1]}"} if m["role"] == "assistant" else m
            for i, m in enumerate(messages)
        ]
        pieces = _MARKER.split(self._apply(marked, False, tools))
        if [int(x) for x in pieces[1::2]] != turns:
            return None
        parts, where, pos = [pieces[0]], [], len(pieces[0])
        for index, piece in zip(pieces[1::2], pieces[2::2], strict=True):
            content = messages[int(index)]["content"]
            where.append((pos, pos + len(content)))
            parts += [content, piece]
            pos += len(content) + len(piece)
        return where if "".join(parts) == text else None

    def _contents_by_prefixes(self, messages: list[dict], text: str, tools=None) -> list[tuple[int, int]]:
        """Where each assistant content is, by rendering the conversation up to each assistant turn
        with the generation prompt (quadratic in turns, but exact for templates that trim)."""
        where, cursor = [], 0
        for i, m in enumerate(messages):
            if m["role"] != "assistant":
                continue
            if i:
                prefix = self._apply(messages[:i], True, tools)
                if not text.startswith(prefix):
                    raise Drop(
                        "template_error", f"turn {i}: the chat template renders earlier turns differently"
                    )
                cursor = max(cursor, len(prefix))
            content = m["content"]
            start = text.find(content, cursor)
            if start < 0 and content.strip():
                content = content.strip()  # templates that trim the content (Llama 3, Gemma)
                start = text.find(content, cursor)
            if start < 0:
                raise Drop("template_error", f"turn {i}: the chat template does not show the content")
            where.append((start, start + len(content)))
            cursor = start + len(content)
        return where

    def _apply(self, messages: list[dict], generation_prompt: bool, tools=None) -> str:
        try:
            if self._direct and not tools and not any(_EXTRAS.intersection(m) for m in messages):
                return self._direct(messages, generation_prompt)
            return self.tok.apply_chat_template(
                messages, tools=tools, tokenize=False, add_generation_prompt=generation_prompt
            )
        except Exception as exc:  # jinja raises its own errors (e.g. "roles must alternate")
            raise Drop("template_error", f"{type(exc).__name__}: {exc}") from None


def _special_tokens(tokenizer) -> set[str]:
    tokens = set(tokenizer.all_special_tokens)
    tokens.update(t.content for t in tokenizer.added_tokens_decoder.values() if t.special)
    return tokens


_REASONING = frozenset({"reasoning_content", "thinking", "reasoning"})  # transformers aliases these
_EXTRAS = _REASONING | {"tool_calls"}
_PROBES = [
    [{"role": "user", "content": " Hi <|im_end|>\n"}, {"role": "assistant", "content": "Hello!  "}],
    [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "q1"},
        {"role": "assistant", "content": "a1"},
        {"role": "user", "content": "q2"},
        {"role": "assistant", "content": "a2"},
    ],
]


def _direct_template(tokenizer):
    """The tokenizer's compiled chat template, called as `apply_chat_template(..., tokenize=False)`
    calls it for plain JSON messages, without its per-call preparation (about 40% of the time of
    rendering a conversation); None when it does not give the same text on probe conversations.
    `apply_chat_template` stays the path for messages with reasoning fields, which it aliases."""
    try:
        from transformers.utils.chat_template_utils import _compile_jinja_template

        compiled = _compile_jinja_template(tokenizer.get_chat_template())
        special = dict(tokenizer.special_tokens_map)

        def render(messages: list[dict], generation_prompt: bool) -> str:
            plain = [{k: v for k, v in m.items() if v is not None} for m in messages]
            return compiled.render(
                messages=plain, tools=None, documents=None, add_generation_prompt=generation_prompt, **special
            )

        same = all(
            render(m, gp) == tokenizer.apply_chat_template(m, tokenize=False, add_generation_prompt=gp)
            for m in _PROBES
            for gp in (False, True)
        )
    except Exception:  # a private helper of transformers: any change there means the public path
        return None
    return render if same else None


# --- the templates as Jinja (what the trained model carries) ----------------------------------


def _lit(text: str) -> str:
    """`text` as a Jinja string literal."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n") + "'"


# Leading system turns, joined with a blank line (ns.system), and where the rest starts (ns.start).
_JINJA_SYSTEM = (
    "{%- set ns = namespace(system=none, start=0) -%}"
    "{%- for m in messages -%}"
    "{%- if m['role'] == 'system' and loop.index0 == ns.start -%}"
    "{%- set ns.system = m['content'] if ns.system is none else ns.system + '\\n\\n' + m['content'] -%}"
    "{%- set ns.start = loop.index0 + 1 -%}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- set rest = messages[ns.start:] -%}"
)
_JINJA_ROLE_ERROR = "{{- raise_exception('role ' + m['role'] + ' after the first turn: this template has no place for it') -}}"


def _jinja_alpaca(bos: str, eos: str) -> str:
    # `alpaca_input` (an apply_chat_template keyword) is meta.alpaca_input: the tail of the first
    # user turn that Alpaca shows under `### Input:`.
    return (
        _JINJA_SYSTEM + "{%- set ctx = alpaca_input if alpaca_input is defined and alpaca_input else '' -%}"
        "{%- set has_input = ctx and rest and rest[0]['role'] == 'user'"
        " and rest[0]['content'].endswith('\\n\\n' + ctx) -%}"
        f"{{{{- {_lit(bos)} -}}}}"
        "{%- if ns.system is not none -%}{{- ns.system -}}"
        f"{{%- elif has_input -%}}{{{{- {_lit(ALPACA_INPUT)} -}}}}"
        f"{{%- else -%}}{{{{- {_lit(ALPACA)} -}}}}{{%- endif -%}}"
        "{%- for m in rest -%}"
        "{%- if m['role'] == 'user' and loop.first and has_input -%}"
        "{{- '\\n\\n### Instruction:\\n' + m['content'][:(m['content'] | length) - (ctx | length) - 2]"
        " + '\\n\\n### Input:\\n' + ctx -}}"
        "{%- elif m['role'] == 'user' -%}{{- '\\n\\n### Instruction:\\n' + m['content'] -}}"
        "{%- elif m['role'] == 'assistant' -%}{{- '\\n\\n### Response:\\n' -}}"
        + _JINJA_THINK
        + f"{{{{- m['content'] + {_lit(eos)} -}}}}"
        f"{{%- else -%}}{_JINJA_ROLE_ERROR}{{%- endif -%}}"
        "{%- endfor -%}"
        "{%- if add_generation_prompt -%}{{- '\\n\\n### Response:\\n' -}}{%- endif -%}"
    )


def _jinja_chat(bos: str, eos: str) -> str:
    return (
        _JINJA_SYSTEM + f"{{{{- {_lit(bos)} -}}}}"
        "{%- if ns.system is not none -%}{{- ns.system + '\\n\\n' -}}{%- endif -%}"
        "{%- for m in rest -%}"
        "{%- if not loop.first -%}{{- '\\n\\n' -}}{%- endif -%}"
        "{%- if m['role'] == 'user' -%}{{- 'Human: ' + m['content'] -}}"
        "{%- elif m['role'] == 'assistant' -%}{{- 'Assistant: ' -}}"
        + _JINJA_THINK
        + f"{{{{- m['content'] + {_lit(eos)} -}}}}"
        f"{{%- else -%}}{_JINJA_ROLE_ERROR}{{%- endif -%}}"
        "{%- endfor -%}"
        "{%- if add_generation_prompt -%}{{- ('\\n\\n' if rest else '') + 'Assistant:' -}}{%- endif -%}"
    )


# An assistant turn's reasoning as a think block (before the content) and its calls (after it), as
# `Renderer._reply` renders them; `m.reasoning` is the canonical key (transformers also passes it on).
_JINJA_THINK = (
    "{%- if m['role'] == 'assistant' and m.reasoning -%}"
    "{{- '<think>\\n' + m.reasoning + '\\n</think>\\n\\n' -}}{%- endif -%}"
)
_JINJA_CALLS = (
    "{%- if m['role'] == 'assistant' and m.tool_calls -%}{%- for c in m.tool_calls -%}"
    "{{- ('\\n' if m['content'] or not loop.first else '') + '<tool_call>\\n'"
    " + ({'name': c.function.name, 'arguments': c.function.arguments} | tojson) + '\\n</tool_call>' -}}"
    "{%- endfor -%}{%- endif -%}"
)


def _jinja_chatml(bos: str, eos: str) -> str:
    return (
        f"{{{{- {_lit(bos)} -}}}}"
        "{%- set ns = namespace(tools='') -%}"
        f"{{%- if tools -%}}{{%- set ns.tools = {_lit(TOOLS_PROMPT)} -%}}"
        "{%- for t in tools -%}{%- set ns.tools = ns.tools + '\\n' + (t | tojson) -%}{%- endfor -%}"
        f"{{%- set ns.tools = ns.tools + {_lit(TOOLS_PROMPT_END)} -%}}"
        "{%- if messages[0]['role'] != 'system' -%}"
        f"{{{{- {_lit(IM_START + 'system' + chr(10))} + ns.tools + {_lit(IM_END + chr(10))} -}}}}"
        "{%- endif -%}{%- endif -%}"
        "{%- for m in messages -%}"
        f"{{{{- {_lit(IM_START)} + m['role'] + '\\n' -}}}}"
        "{%- if loop.first and m['role'] == 'system' and ns.tools -%}{{- m['content'] + '\\n\\n' + ns.tools -}}"
        "{%- else -%}" + _JINJA_THINK + "{{- m['content'] -}}" + _JINJA_CALLS + "{%- endif -%}"
        f"{{{{- {_lit(IM_END)} + '\\n' -}}}}"
        "{%- endfor -%}"
        f"{{%- if add_generation_prompt -%}}{{{{- {_lit(IM_START + 'assistant' + chr(10))} -}}}}{{%- endif -%}}"
    )


_JINJA = {"alpaca": _jinja_alpaca, "chat": _jinja_chat, "chatml": _jinja_chatml}


def require_control_tokens(template: str, tokenizer) -> None:
    """Refuse a template whose control tokens the tokenizer lacks as special tokens (chatml on
    GPT-2): as plain text they are several ordinary tokens, and the model never learns to stop."""
    if template != "chatml":
        return
    missing = [t for t in (IM_START, IM_END) if t not in _special_tokens(tokenizer)]
    if missing:
        raise TemplateError(
            f"format.template: chatml needs {' and '.join(missing)} as special tokens, and this tokenizer "
            "lacks them (the model would never learn to stop); use alpaca or chat, or a base that has them"
        )


def chat_template(template: str, tokenizer) -> str | None:
    """The Jinja chat template that renders what `Renderer(template, tokenizer)` renders (the
    generation prompt ends where the trained answer begins); the tokenizer's own for `tokenizer`."""
    if template == "tokenizer":
        return tokenizer.chat_template
    require_control_tokens(template, tokenizer)
    from sftpipe.data.format.tokenizer import bos_prefix

    return _JINJA[template](bos_prefix(tokenizer), tokenizer.eos_token)


def end_of_turn(template: str, tokenizer) -> str:
    """The special token that closes an assistant turn in `template` (generation stops there)."""
    content = "Hello"
    rendered = Renderer(template, tokenizer)(
        [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": content}]
    )
    tail = rendered.completion
    found = [t for t in _special_tokens(tokenizer) if t and tail.endswith(t)]
    if not found:
        raise TemplateError(f"format.template: {template} ends an assistant turn with no special token")
    return max(found, key=len)
