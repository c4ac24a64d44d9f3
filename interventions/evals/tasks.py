"""Task prompts for per-head scoring: records with the task-relevant character span of each
prompt (multiple choice: the question), read from JSON or JSON-lines files with errors that name
the file, line and field, and the bundled commonsense multiple-choice set.

>>> records = load_records(BUNDLED_DATA)          # 42 commonsense questions, each with a span
>>> records[0].text[slice(*records[0].span)]      # the question
"""

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

BUNDLED_DATA = Path(__file__).resolve().parent.parent / "data" / "commonsense_mc.jsonl"
TEXT_FIELDS = ("input", "text", "question")
MC_QUESTION_PREFIX = "Question: "
_SEPARATORS = re.compile(r"[\s,]*")  # between the items of a JSON array
NO_RECORDS = (
    "no records to score: the records were empty; pass at least one (a prompt string, a "
    "record dict or a Prompt), e.g. load_records(BUNDLED_DATA)"
)


class DataError(ValueError):
    """A record or data file that cannot be used; the message names the file, line and field."""


@dataclass(frozen=True)
class Prompt:
    """One prompt to score. ``span`` is the task-relevant character span of ``text``."""

    text: str
    span: tuple[int, int] | None = None
    answer: str | None = None  # multiple choice: the correct label, e.g. "B"
    labels: tuple[str, ...] = ()
    where: str = ""  # "file.jsonl:12" or "records[3]", for messages


def mc_prompt(question: str, texts: Sequence[str], labels: Sequence[str]) -> Prompt:
    """The multiple-choice template; the span is the question's characters."""
    options = "\n".join(f"{label}. {text}" for label, text in zip(labels, texts, strict=True))
    text = f"{MC_QUESTION_PREFIX}{question}\n{options}\nAnswer:"
    start = len(MC_QUESTION_PREFIX)
    return Prompt(text, (start, start + len(question)), labels=tuple(labels))


def parse_record(record: Any, where: str) -> Prompt:
    """Validate one record: multiple choice (question, choices {text, label}, answerKey) or a
    record with one of input / text / question. Errors name ``where`` and the field."""
    if isinstance(record, Prompt):
        return record
    if isinstance(record, str):
        if not record.strip():
            raise DataError(f"{where}: empty prompt string")
        return Prompt(record, where=where)
    if not isinstance(record, Mapping):
        raise DataError(f"{where}: expected a JSON object, got {type(record).__name__}")
    if "choices" not in record:
        key = next((k for k in TEXT_FIELDS if k in record), None)
        if key is None:
            raise DataError(
                f"{where}: missing field: expected 'question' with 'choices' (multiple choice) "
                f"or one of {', '.join(repr(k) for k in TEXT_FIELDS)}; got fields "
                f"{sorted(record)}"
            )
        return Prompt(_text_field(record[key], key, where), where=where)
    question = record.get("question")
    if question is None:
        raise DataError(f"{where}: field 'question' is missing (multiple-choice record)")
    if isinstance(question, Mapping) and isinstance(question.get("stem"), str):
        question = question["stem"]  # OpenBookQA-style {"stem": ...}
    question = _text_field(question, "question", where)
    texts, labels = _choices(record["choices"], where)
    answer = record.get("answerKey")
    if answer is not None and str(answer) not in labels:
        raise DataError(
            f"{where}: field 'answerKey' is {answer!r}, not one of the choice labels {labels}"
        )
    answer = None if answer is None else str(answer)
    return replace(mc_prompt(question, texts, labels), answer=answer, where=where)


def _text_field(value: Any, key: str, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise DataError(f"{where}: field '{key}' must be a non-empty string, got {value!r}")
    return value


def _choices(choices: Any, where: str) -> tuple[list[str], list[str]]:
    if isinstance(choices, list) and all(isinstance(c, Mapping) for c in choices):
        for i, choice in enumerate(choices):  # [{"text", "label"}, ...] -> {"text": [...], ...}
            for key in ("text", "label"):
                if key not in choice:
                    raise DataError(f"{where}: field 'choices[{i}].{key}' is missing")
        choices = {key: [c[key] for c in choices] for key in ("text", "label")}
    if not isinstance(choices, Mapping):
        raise DataError(
            f"{where}: field 'choices' must be {{'text': [...], 'label': [...]}} or a list of "
            f"{{'text', 'label'}} objects, got {type(choices).__name__}"
        )
    for key in ("text", "label"):
        if key not in choices:
            raise DataError(f"{where}: field 'choices.{key}' is missing")
        if not isinstance(choices[key], list):
            raise DataError(f"{where}: field 'choices.{key}' must be a list")
    texts, labels = choices["text"], choices["label"]
    if len(texts) != len(labels):
        raise DataError(f"{where}: field 'choices' has {len(texts)} texts but {len(labels)} labels")
    if len(texts) < 2:
        raise DataError(f"{where}: field 'choices' needs at least 2 choices, got {len(texts)}")
    for name, values in (("text", texts), ("label", labels)):
        bad = [v for v in values if not isinstance(v, str) or not v.strip()]
        if bad:
            raise DataError(f"{where}: field 'choices.{name}' has empty or non-string {bad[0]!r}")
    return list(texts), list(labels)


def load_records(path: str | Path) -> list[Prompt]:
    """Read a JSON array or JSON-lines file of records (see ``parse_record``).

    Errors (file missing, empty, invalid JSON, missing fields) name the file and line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"data file {path} does not exist")
    text = path.read_text(encoding="utf-8")
    if not text.strip():
        raise DataError(f"{path}: no records (the file is empty)")
    items = _json_array(text, path) if text.lstrip().startswith("[") else _json_lines(text, path)
    if not items:
        raise DataError(f"{path}: no records")
    return [parse_record(record, f"{path}:{line}") for line, record in items]


def _json_lines(text: str, path: Path) -> list[tuple[int, Any]]:
    items = []
    for line, row in enumerate(text.splitlines(), start=1):
        if not row.strip():
            continue
        try:
            items.append((line, json.loads(row)))
        except json.JSONDecodeError as error:
            raise DataError(
                f"{path}:{line}: invalid JSON line ({error.msg} at column {error.colno})"
            ) from None
    return items


def _json_array(text: str, path: Path) -> list[tuple[int, Any]]:
    """Items of a top-level JSON array, each with the line it starts on."""
    try:
        json.loads(text)
    except json.JSONDecodeError as error:
        raise DataError(f"{path}:{error.lineno}: invalid JSON ({error.msg})") from None
    # valid JSON: decode it again item by item, to know the line each item starts on
    decoder, items, index = json.JSONDecoder(), [], text.index("[") + 1
    while (start := _SEPARATORS.match(text, index).end()) < len(text) and text[start] != "]":
        record, index = decoder.raw_decode(text, start)
        items.append((text.count("\n", 0, start) + 1, record))
    return items
