"""Task records (interventions/evals/tasks.py): the bundled data set, parsing, and errors that
name the file, line and field."""

import pytest

from interventions.evals import tasks

FISH = {
    "question": "Where do fish live?",
    "choices": {"text": ["sea", "sky"], "label": ["A", "B"]},
    "answerKey": "A",
}


def test_bundled_data_set():
    records = tasks.load_records(tasks.BUNDLED_DATA)
    assert len(records) >= 36
    assert all(r.span is not None and r.answer in r.labels for r in records)
    assert len({r.text for r in records}) == len(records)


@pytest.mark.parametrize(
    "content,message",
    [
        ("", r"data\.jsonl: no records \(the file is empty\)"),
        (
            '{"question": "q?", "choices": {"text": ["a", "b"], "label": ["A", "B"]}}\n{oops\n',
            r"data\.jsonl:2: invalid JSON line",
        ),
        (
            '{"text": "fine"}\n\n{"choices": {"text": ["a", "b"], "label": ["A", "B"]}}\n',
            r"data\.jsonl:3: field 'question' is missing",
        ),
        (
            '{"question": "q?", "choices": {"text": ["a", "b"]}}\n',
            r"data\.jsonl:1: field 'choices.label' is missing",
        ),
        (
            '{"question": "q?", "choices": {"text": ["a", "b"], "label": ["A"]}}\n',
            r"data\.jsonl:1: field 'choices' has 2 texts but 1 labels",
        ),
        (
            '{"question": "q?", "choices": {"text": ["a", "b"], "label": ["A", "B"]}, '
            '"answerKey": "C"}\n',
            r"data\.jsonl:1: field 'answerKey' is 'C'",
        ),
        ('{"prompt": "x"}\n', r"data\.jsonl:1: missing field.*'input', 'text', 'question'"),
        ('{"text": ""}\n', r"data\.jsonl:1: field 'text' must be a non-empty string"),
        ("[1, 2]\n", r"data\.jsonl:1: expected a JSON object, got int"),
    ],
)
def test_bad_data_names_file_line_and_field(tmp_path, content, message):
    path = tmp_path / "data.jsonl"
    path.write_text(content)
    with pytest.raises(tasks.DataError, match=message):
        tasks.load_records(path)


def test_json_array_reports_line_of_bad_item(tmp_path):
    path = tmp_path / "data.json"
    path.write_text('[\n  {"text": "ok"},\n  {"text": "ok too"},\n  {"txt": "bad"}\n]\n')
    with pytest.raises(tasks.DataError, match=r"data\.json:4: missing field"):
        tasks.load_records(path)
    path.write_text('[\n  {"text": "ok"},\n  {"text": \n]\n')
    with pytest.raises(tasks.DataError, match=r"data\.json:4: invalid JSON"):
        tasks.load_records(path)
    path.write_text('[{"text": "a"},\n {"input": "b"}]')
    assert [p.text for p in tasks.load_records(path)] == ["a", "b"]
    with pytest.raises(FileNotFoundError, match="missing.jsonl does not exist"):
        tasks.load_records(tmp_path / "missing.jsonl")


def test_json_array_errors_name_the_line(tmp_path):
    path = tmp_path / "data.json"
    for content, message in [
        ('[{"text": "a"}]\n\nextra\n', r"data\.json:3: invalid JSON \(Extra data\)"),
        (
            '[{"text": "a"}\n {"text": "b"}]',
            r"data\.json:2: invalid JSON \(Expecting ',' delimiter",
        ),
        ("[\n]\n", r"data\.json: no records$"),
    ]:
        path.write_text(content)
        with pytest.raises(tasks.DataError, match=message):
            tasks.load_records(path)
    path.write_text('[\n {"text": "a [1]"}, \n\n  {"input": "b\\n"}\n]')
    assert [(p.text, p.where[-1]) for p in tasks.load_records(path)] == [
        ("a [1]", "2"),
        ("b\n", "4"),
    ]


def test_choices_as_a_list_of_objects_and_a_stem():
    record = {
        "question": {"stem": "Where do fish live?"},
        "choices": [{"text": "sea", "label": "A"}, {"text": "sky", "label": "B"}],
        "answerKey": "A",
    }
    prompt = tasks.parse_record(record, "r")
    assert prompt == tasks.parse_record(FISH, "r")
    assert prompt.answer == "A" and prompt.labels == ("A", "B") and prompt.where == "r"
    record["choices"][1] = {"text": "sky"}
    with pytest.raises(tasks.DataError, match=r"r: field 'choices\[1\]\.label' is missing"):
        tasks.parse_record(record, "r")
    record["choices"] = "sea or sky"
    with pytest.raises(tasks.DataError, match=r"r: field 'choices' must be .* got str"):
        tasks.parse_record(record, "r")
