"""Chat templates: a model's Jinja template (a GGUF's tokenizer.chat_template, a Hub tokenizer_config.json's
chat_template) rendered as Hugging Face's transformers renders it, so the prompt the model sees is the one it
was trained on.

    prompt = render_chat(template, [{"role": "user", "content": "What is the capital of France?"}],
                         add_generation_prompt=True)
    # SmolLM2: '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, ...<|im_end|>\n'
    #          '<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n'

The environment is transformers' (its _compile_jinja_template): jinja2's ImmutableSandboxedEnvironment (a
template is data from a file: it may not touch Python objects' internals), trim_blocks and lstrip_blocks (a
block tag eats its own newline and the spaces before it), the `raise_exception(message)` function (a
template rejecting a conversation raises ChatTemplateError with the template's message), `tojson` that keeps
non-ASCII text as it is, and `strftime_now`. Variables: messages, add_generation_prompt, plus any extra
(bos_token, eos_token, tools, ...).
"""
from __future__ import annotations

import json
from datetime import datetime

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

USER = "user"
ASSISTANT = "assistant"
SYSTEM = "system"


class ChatTemplateError(ValueError):
    """A template that does not compile, or that rejects the conversation (its raise_exception)."""


def _raise_exception(message: str):
    raise ChatTemplateError(message)


def _tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False) -> str:
    # transformers' tojson: non-ASCII kept (jinja2's own escapes it and HTML-quotes <, >, &, ').
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(format: str) -> str:
    return datetime.now().strftime(format)


def compile_template(template: str) -> jinja2.Template:
    """The Jinja template in transformers' sandboxed environment; ChatTemplateError when it does not parse."""
    environment = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                                extensions=["jinja2.ext.loopcontrols"])
    environment.filters["tojson"] = _tojson
    environment.globals["raise_exception"] = _raise_exception
    environment.globals["strftime_now"] = _strftime_now
    try:
        return environment.from_string(template)
    except jinja2.TemplateSyntaxError as error:
        raise ChatTemplateError(f"the chat template does not parse (line {error.lineno}: {error.message})") from error


def check_messages(messages) -> list[dict]:
    """Messages as the templates expect them: a list of {"role": str, "content": str}."""
    if not isinstance(messages, (list, tuple)) or not messages:
        raise ChatTemplateError("messages must be a non-empty list of {'role': ..., 'content': ...}")
    for position, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str) or "content" not in message:
            raise ChatTemplateError(f"message {position} ({message!r}) is not {{'role': str, 'content': ...}}")
    return [dict(message) for message in messages]


def render_chat(template: str, messages, *, add_generation_prompt: bool = True, **variables) -> str:
    """The prompt text of `messages` under `template` (Jinja), as transformers' apply_chat_template(...,
    tokenize=False) renders it; add_generation_prompt appends the assistant turn's opening."""
    compiled = compile_template(template)
    try:
        return compiled.render(messages=check_messages(messages), add_generation_prompt=add_generation_prompt,
                               **variables)
    except jinja2.TemplateError as error:
        raise ChatTemplateError(f"the chat template failed: {error}") from error


def user_turn(text: str) -> list[dict]:
    """One user message: what `gpt2 generate --chat MESSAGE` sends."""
    return [{"role": USER, "content": text}]
