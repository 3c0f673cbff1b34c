"""labelconfig: exact TaskSpecs for the shipped configs and variants, every error case, hostile XML,
and the result / annotation / task-input conversions."""

from __future__ import annotations

from pathlib import Path

import pytest

from backend.labelconfig import (
    LabelConfigError,
    TaskSpec,
    annotation_labels,
    choices_result,
    parse_label_config,
    task_input,
)

CONFIGS = Path(__file__).resolve().parents[1] / "label_config"


def view(body: str) -> str:
    return f"<View>{body}</View>"


TEXT = '<Text name="text" value="$text"/>'


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("spam.xml", TaskSpec("label", "text", "text", ("spam", "no_spam"), False, "text", "Text")),
        (
            "sentiment.xml",
            TaskSpec("sentiment", "text", "text", ("positive", "negative", "neutral"), False, "text", "Text"),
        ),
        (
            "topic.xml",
            TaskSpec(
                "topic",
                "text",
                "text",
                ("business", "entertainment", "politics", "sport", "tech"),
                False,
                "text",
                "Text",
            ),
        ),
        (
            "multilabel.xml",
            TaskSpec("tags", "text", "text", ("billing", "bug", "feature_request", "urgent"), True, "text", "Text"),
        ),
        ("tabular.xml", TaskSpec("label", "table", "features", ("spam", "no_spam"), False, "tabular", "Table")),
        ("image.xml", TaskSpec("label", "image", "image", ("cat", "dog", "other"), False, "image", "Image")),
    ],
)
def test_shipped_configs(name: str, expected: TaskSpec) -> None:
    assert parse_label_config((CONFIGS / name).read_text()) == expected


def test_image_config() -> None:
    xml = view(
        '<Image name="img" value="$image" zoom="true"/>'
        '<Choices name="digit" toName="img"><Choice value="0"/><Choice value="1"/></Choices>'
    )
    assert parse_label_config(xml) == TaskSpec("digit", "img", "image", ("0", "1"), False, "image", "Image")
    # valueType="url" is how an Image is always given: it is not refused as it is for Text.
    xml_url = view(
        '<Image name="i" value="$u" valueType="url"/><Choices name="c" toName="i"><Choice value="a"/></Choices>'
    )
    assert parse_label_config(xml_url).kind == "image"


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"image": "/data/upload/1/a.png"}, "/data/upload/1/a.png"),
        ({"image": "  s3://bucket/key.jpg "}, "s3://bucket/key.jpg"),
    ],
)
def test_image_task_input(data: dict, expected: str) -> None:
    spec = TaskSpec("c", "img", "image", ("a", "b"), False, "image", "Image")
    assert task_input(spec, data) == expected


@pytest.mark.parametrize("data", [{}, {"image": ""}, {"image": 3}, {"image": {"url": "x"}}, {"other": "/a.png"}])
def test_image_task_input_refuses_non_urls(data: dict) -> None:
    spec = TaskSpec("c", "img", "image", ("a", "b"), False, "image", "Image")
    with pytest.raises(ValueError, match="'image' must be an image URL"):
        task_input(spec, data)


def test_variants() -> None:
    # HyperText, lower-case tags, alias, other controls before the Choices, nested views.
    xml = """<view>
      <Audio name="clip" value="$audio"/>
      <Choices name="clip_cls" toName="clip"><Choice value="cat"/></Choices>
      <View><hypertext name="page" value="$html"/></View>
      <TextArea name="note" toName="page"/>
      <Choices name="region_cls" toName="page" perRegion="true"><Choice value="r"/></Choices>
      <View><choices name="kind" toName="page" choice="multiple">
        <choice value="Advert" alias="ad"/><choice value="news"/>
      </choices></View>
      <Choices name="later" toName="page"><Choice value="z"/></Choices>
    </view>"""
    assert parse_label_config(xml) == TaskSpec("kind", "page", "html", ("ad", "news"), True, "text", "HyperText")
    single_radio = view(
        TEXT + '<Choices name="c" toName="text" choice="single-radio"><Choice value="a"/><Choice value="b"/></Choices>'
    )
    assert parse_label_config(single_radio).multi_label is False


@pytest.mark.parametrize(
    ("xml", "message"),
    [
        ("not xml at all <", "not well-formed XML"),
        ("", "empty"),
        ("<Choices/>", "must have <View> as its root, got <Choices>"),
        (view(TEXT), "no <Choices>"),
        (view(TEXT + '<Choices name="c" toName="text"></Choices>'), "<Choices name='c'> has no <Choice"),
        (
            view(TEXT + '<Choices name="c" toName="nowhere"><Choice value="a"/></Choices>'),
            "toName='nowhere', which names no object",
        ),
        (
            view('<Audio name="snd" value="$snd"/><Choices name="c" toName="snd"><Choice value="a"/></Choices>'),
            "bound to <Audio> 'snd', which lsal does not support",
        ),
        (
            view('<Text name="text" value="hello"/><Choices name="c" toName="text"><Choice value="a"/></Choices>'),
            "value='hello'; expected value=\"\\$key\"",
        ),
        (
            view(
                '<Text name="t" value="$u" valueType="url"/><Choices name="c" toName="t"><Choice value="a"/></Choices>'
            ),
            'valueType="url"',
        ),
        (view(TEXT + '<Choices toName="text"><Choice value="a"/></Choices>'), "without name or toName"),
    ],
)
def test_config_errors(xml: str, message: str) -> None:
    with pytest.raises(LabelConfigError, match=message) as info:
        parse_label_config(xml)
    assert info.value.field == "label_config"
    assert isinstance(info.value, ValueError)


BILLION_LAUGHS = """<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">]>
<View><Text name="text" value="$text"/><Choices name="c" toName="text"><Choice value="&lol3;"/></Choices></View>"""

EXTERNAL = """<?xml version="1.0"?>
<!DOCTYPE View [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>
<View><Text name="text" value="$text"/><Choices name="c" toName="text"><Choice value="&xxe;"/></Choices></View>"""

DTD_ONLY = """<?xml version="1.0"?><!DOCTYPE View SYSTEM "http://example.invalid/x.dtd">
<View><Text name="text" value="$text"/><Choices name="c" toName="text"><Choice value="a"/></Choices></View>"""


@pytest.mark.parametrize("xml", [BILLION_LAUGHS, EXTERNAL, DTD_ONLY])
def test_hostile_xml_refused(xml: str) -> None:
    with pytest.raises(LabelConfigError, match="DTDs and entities are not allowed"):
        parse_label_config(xml)


def test_oversized_config_refused_before_parsing() -> None:
    big = view(TEXT + '<Choices name="c" toName="text"><Choice value="a"/></Choices>' + " " * 10_000_000)
    with pytest.raises(LabelConfigError, match="larger than 1000000 bytes"):
        parse_label_config(big)


def test_choices_result_and_annotation_labels() -> None:
    spec = parse_label_config((CONFIGS / "multilabel.xml").read_text())
    result = choices_result(spec, ["bug", "urgent"])
    assert result == [
        {"from_name": "tags", "to_name": "text", "type": "choices", "value": {"choices": ["bug", "urgent"]}}
    ]
    assert choices_result(spec, []) == []
    assert annotation_labels(spec, result) == ["bug", "urgent"]
    mixed = [
        {"from_name": "other", "to_name": "text", "type": "choices", "value": {"choices": ["bug"]}},
        {"from_name": "tags", "type": "choices", "value": {"choices": ["billing", "not_in_config"]}},
        {"from_name": "tags", "value": "broken"},
        "garbage",
    ]
    assert annotation_labels(spec, mixed) == ["billing", "not_in_config"]
    assert annotation_labels(spec, None) == []


def test_task_input_text_hypertext_and_missing_key() -> None:
    spec = parse_label_config((CONFIGS / "spam.xml").read_text())
    assert task_input(spec, {"text": "hello", "other": 1}) == "hello"
    with pytest.raises(ValueError, match="task data has no key 'text'"):
        task_input(spec, {"body": "hello"})
    with pytest.raises(ValueError, match="must be text, got NoneType"):
        task_input(spec, {"text": None})
    html_spec = parse_label_config(
        view('<HyperText name="p" value="$html"/><Choices name="c" toName="p"><Choice value="a"/></Choices>')
    )
    page = "<style>p {x: 1}</style><p>Fish &amp; <b>chips</b></p><!-- note --><script>var a = 1;</script>"
    assert task_input(html_spec, {"html": page}).split() == ["Fish", "&", "chips"]


def test_task_input_tabular_numeric_fields_only() -> None:
    spec = parse_label_config((CONFIGS / "tabular.xml").read_text())
    row = {"a": 1, "b": 2.5, "c": True, "d": None, "e": "x", "f": "3.5", "g": float("nan"), "h": [1]}
    assert task_input(spec, {"features": row}) == {"a": 1.0, "b": 2.5, "f": 3.5}
    # Documented fallback: without the key, the task's own top-level fields (a CSV import).
    assert task_input(spec, {"x": 4, "name": "n"}) == {"x": 4.0}
    with pytest.raises(ValueError, match="'features' must be an object of named numbers, got list"):
        task_input(spec, {"features": [1, 2]})
