"""tokenizer.chat_template = "hf": a Llama-3.2-Instruct-style Jinja template, exact spans,
labels, JEPA views and indices checked against the rendered string."""

import json
from types import SimpleNamespace

import pytest

from helpers import TOKENIZER
from titan_jepa.config import load_config
from titan_jepa.data.batch import IGNORE_INDEX
from titan_jepa.data.chat import ChatSamples
from titan_jepa.data.hf_chat_template import ChatTemplateError
from titan_jepa.data.sources import BadLines
from titan_jepa.data.tokenizer import TokenizerError, build_tokenizer
from titan_jepa.data.views import JepaViews

# Written for these tests in the layout of Llama-3.2-Instruct's template (no tool calls):
# a system header with the knowledge cut-off and the date, then one header per message.
LLAMA32_TEMPLATE = (
    "{{- bos_token }}\n"
    "{%- if not date_string is defined %}\n"
    "    {%- if strftime_now is defined %}\n"
    "        {%- set date_string = strftime_now(\"%d %b %Y\") %}\n"
    "    {%- else %}\n"
    "        {%- set date_string = \"26 Jul 2024\" %}\n"
    "    {%- endif %}\n"
    "{%- endif %}\n"
    "{#- the system message, if any, goes into the system header #}\n"
    "{%- if messages[0]['role'] == 'system' %}\n"
    "    {%- set system_message = messages[0]['content']|trim %}\n"
    "    {%- set messages = messages[1:] %}\n"
    "{%- else %}\n"
    "    {%- set system_message = \"\" %}\n"
    "{%- endif %}\n"
    "{{- \"<|start_header_id|>system<|end_header_id|>\\n\\n\" }}\n"
    "{{- \"Cutting Knowledge Date: December 2023\\n\" }}\n"
    "{{- \"Today Date: \" + date_string + \"\\n\\n\" }}\n"
    "{{- system_message }}\n"
    "{{- \"<|eot_id|>\" }}\n"
    "{%- for message in messages %}\n"
    "    {%- if not message['role'] in ['user', 'assistant'] %}\n"
    "        {{- raise_exception('roles must be user or assistant after the system message') }}\n"
    "    {%- endif %}\n"
    "    {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'"
    "+ message['content'] | trim + '<|eot_id|>' }}\n"
    "{%- endfor %}\n"
    "{%- if add_generation_prompt %}\n"
    "    {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}\n"
    "{%- endif %}\n"
)

MESSAGES = [
    {"role": "system", "content": "Convert natural language to regular expression.  "},
    {"role": "user", "content": "  lines with the string 'dog' before a number\n"},
    {"role": "assistant", "content": "(dog).*([0-9])"},
]


def write_template(folder, template=LLAMA32_TEMPLATE):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>", "chat_template": template}))
    return folder / "tokenizer_config.json"


def hf_tokenizer(tmp_path, template=LLAMA32_TEMPLATE):
    cfg = SimpleNamespace(kind="tiktoken", path=str(TOKENIZER), chat_template="hf",
                          chat_template_path=str(write_template(tmp_path / "tc", template)),
                          chat_template_date="26 Jul 2024")
    return build_tokenizer(cfg)


def test_rendering_equals_transformers(tmp_path):
    from transformers.utils.chat_template_utils import render_jinja_template

    tok = hf_tokenizer(tmp_path)
    ours = tok.hf_chat_template.render(MESSAGES)
    theirs = render_jinja_template([MESSAGES], chat_template=LLAMA32_TEMPLATE, bos_token="<|begin_of_text|>",
                                   eos_token="<|eot_id|>", date_string="26 Jul 2024")
    theirs = theirs[0][0] if isinstance(theirs, tuple) else theirs
    theirs = theirs[0] if isinstance(theirs, list) else theirs
    assert ours == theirs
    assert ours.startswith("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"
                           "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n"
                           "Convert natural language to regular expression.<|eot_id|>")


def test_spans_labels_equal_the_rendered_string(tmp_path):
    tok = hf_tokenizer(tmp_path)
    rendered = tok.hf_chat_template.render(MESSAGES)
    enc = tok.encode_chat(MESSAGES)
    # the piecewise tokenisation is the tokenisation of the whole rendered string
    assert enc.ids == tok.encode(rendered, allow_special=True)
    assert tok.decode(enc.ids) == rendered
    for (role, start, end), m in zip(enc.spans, MESSAGES):
        assert role == m["role"] and tok.decode(enc.ids[start:end]) == m["content"].strip()
    (us, ue), (as_, ae) = enc.user_span, enc.assistant_span
    assert tok.decode(enc.text_ids) == MESSAGES[1]["content"].strip() and enc.text_ids == enc.ids[us:ue]
    assert tok.decode(enc.code_ids) == MESSAGES[2]["content"].strip() and enc.code_ids == enc.ids[as_:ae]
    # assistant-only targets: its content and the <|eot_id|> that ends its turn, nothing else
    on = [i for i, k in enumerate(enc.loss_mask) if k]
    assert on == list(range(as_, ae + 1)) and enc.ids[ae] == tok.eot_id
    samples = ChatSamples(tok, "assistant", 256, BadLines("fail"))({"messages": MESSAGES}, "x:1")
    want = [IGNORE_INDEX] * len(enc.ids)
    for i in range(as_ - 1, ae):
        want[i] = enc.ids[i + 1]
    assert samples.ids == enc.ids and samples.labels == want
    # the llama3 layout lacks the date header: the two differ by exactly that text
    plain = load_config(extra={"tokenizer": {"path": str(TOKENIZER)}})
    llama3 = build_tokenizer(plain.tokenizer).encode_chat(MESSAGES)
    assert "Cutting Knowledge" not in tok.decode(llama3.ids) and len(llama3.ids) < len(enc.ids)
    assert tok.decode(llama3.ids[llama3.assistant_span[0]:llama3.assistant_span[1]]) == "(dog).*([0-9])"


def test_jepa_views_are_the_templates_one_message_renderings(tmp_path):
    tok = hf_tokenizer(tmp_path)
    jepa = load_config(extra={"data": {"kind": "chat"}, "jepa": {"enable": True, "k": 2}}).jepa
    views = JepaViews(ChatSamples(tok, "assistant", 256, BadLines("fail")), jepa, tok, 256, 0, 0,
                      BadLines("fail"))
    s = views({"messages": MESSAGES}, "x:1")
    (full, _), (text, text_labels), (code, _) = [(x.ids, x.labels) for x in s.segments]
    t = tok.hf_chat_template
    assert full == tok.encode(t.render(MESSAGES), allow_special=True)
    preds = tok.predictor_token_ids(2)
    user = tok.encode(t.render([MESSAGES[1]]), allow_special=True)
    assert "Cutting Knowledge Date" in tok.decode(user)
    assert text == user[:-1] + preds + user[-1:] and set(text_labels) == {IGNORE_INDEX}
    assert code == tok.encode(t.render([MESSAGES[2]]), allow_special=True)
    pred_at, target_at = s.marks["jepa"]
    assert pred_at == len(full) + len(text) - 2 and (full + text + code)[pred_at] == preds[-1]
    assert target_at == len(full) + len(text) + len(code) - 2
    assert tok.decode([(full + text + code)[target_at]]) == tok.decode(tok.encode("(dog).*([0-9])")[-1:])


def test_template_errors_are_one_line(tmp_path):
    with pytest.raises(ChatTemplateError, match="does not exist; set tokenizer.chat_template_path"):
        build_tokenizer(SimpleNamespace(kind="tiktoken", path=str(TOKENIZER), chat_template="hf",
                                        chat_template_path=str(tmp_path / "nope.json"), chat_template_date="x"))
    tok = hf_tokenizer(tmp_path, "{{ messages[-1]['content'] }}")  # drops all but one message
    with pytest.raises(TokenizerError, match="exactly once"):
        tok.encode_chat(MESSAGES)
    tok = hf_tokenizer(tmp_path / "b", "{% for m in messages %}{{ m['content'] | upper }}{% endfor %}")
    with pytest.raises(TokenizerError, match="changes message contents"):
        tok.encode_chat(MESSAGES)
    tok = hf_tokenizer(tmp_path / "c")
    with pytest.raises(TokenizerError, match="refused the conversation"):
        tok.encode_chat([{"role": "user", "content": "a"}, {"role": "tool", "content": "b"}])


def test_eval_prompt_is_the_templates_generation_prompt(tmp_path):
    from titan_jepa.eval.run import generation_prompt

    tok = hf_tokenizer(tmp_path)
    want = tok.hf_chat_template.render(MESSAGES[:-1], add_generation_prompt=True)
    assert generation_prompt(tok, MESSAGES) == tok.encode(want, allow_special=True)
