"""Chat templates rendered as transformers renders them (gptcore/tasks/chat.py): known outputs of small
templates that show each setting of its environment."""
from __future__ import annotations

import pytest

from gptcore.tasks.chat import ChatTemplateError, render_chat, user_turn


def test_trim_blocks_and_lstrip_blocks_eat_the_tag_lines():
    template = "{% for m in messages %}\n    {% if m.role == 'user' %}\n[{{ m.content }}]\n    {% endif %}\n{% endfor %}"
    assert render_chat(template, [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]) == "[a]\n[b]\n"


def test_generation_prompt_and_extra_variables():
    template = "{{ bos_token }}{{ messages[0]['content'] }}{% if add_generation_prompt %}>{% endif %}"
    assert render_chat(template, user_turn("hi"), bos_token="<s>") == "<s>hi>"
    assert render_chat(template, user_turn("hi"), add_generation_prompt=False, bos_token="<s>") == "<s>hi"


def test_raise_exception_surfaces_the_templates_message():
    template = "{% if messages[0]['role'] != 'system' %}{{ raise_exception('system first') }}{% endif %}"
    with pytest.raises(ChatTemplateError, match="system first"):
        render_chat(template, user_turn("hi"))


def test_tojson_keeps_non_ascii_and_the_sandbox_blocks_internals():
    assert render_chat("{{ messages[0]['content'] | tojson }}", user_turn("café <b>")) == '"café <b>"'
    with pytest.raises(ChatTemplateError):
        render_chat("{{ messages.__class__.__mro__ }}{{ ''.__class__.__subclasses__() }}", user_turn("x"))


def test_bad_templates_and_messages_are_named():
    with pytest.raises(ChatTemplateError, match="does not parse"):
        render_chat("{% for %}", user_turn("x"))
    with pytest.raises(ChatTemplateError, match="not {'role'"):
        render_chat("{{ messages }}", ["just text"])
