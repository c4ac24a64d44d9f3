"""Command line: options from flags and YAML, validation before anything is written, --threads.

The model loader is replaced by a tiny random Llama with the suite's fake tokenizer, one token
per character after a BOS (no files, no network); tests/recipes/test_head_scores.py runs the
commands end to end on saved models."""

import json

import pytest
import torch
import yaml
from fakes import WordTokenizer

from interventions import cli
from interventions.models import tiny

RECORDS = [{"text": "Where do fish live?"}, {"text": "What do bees make?"}]


@pytest.fixture
def loads(monkeypatch):
    """Replaces the model loader; returns the list of torch thread counts seen at each load."""
    threads_at_load = []

    def load_model(name, dtype, device):
        threads_at_load.append(torch.get_num_threads())
        return tiny("llama", n_kv_heads=2), WordTokenizer(chars=True, bos=True)

    monkeypatch.setattr(cli, "load_model", load_model)
    return threads_at_load


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """An empty working directory (runs/ goes there) with a good data file beside it."""
    root = tmp_path / "work"
    root.mkdir()
    monkeypatch.chdir(root)
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    return root


@pytest.fixture
def restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def run(capsys, *argv):
    code = cli.main(["score-heads", "--no-progress", "--no-plots", *argv])
    return code, capsys.readouterr().err


@pytest.mark.parametrize(
    "content,message",
    [
        ("", "no records"),
        ('{"text": "ok"}\n{"text": \n', "data.jsonl:2: invalid JSON line"),
        (b"\xff\xfe{", "not UTF-8 text"),
        (None, "does not exist"),
    ],
)
def test_bad_data_creates_nothing(workdir, loads, capsys, content, message):
    data = workdir.parent / "data.jsonl"
    if content is None:
        data.unlink()
    elif isinstance(content, bytes):
        data.write_bytes(content)
    else:
        data.write_text(content)
    for command in (["score-heads"], ["compare-heads", "--after", "x"]):
        code = cli.main([*command, "--data", str(data), "--no-progress"])
        err = capsys.readouterr().err
        assert code == 2 and err.startswith(f"interventions {command[0]}: error: ")
        assert message in err
    assert list(workdir.iterdir()) == []  # no runs/score-heads-*/config.yaml left behind
    assert loads == []


def test_a_good_run_writes_its_folder(workdir, loads, capsys, restore_threads):
    code, err = run(capsys, "--data", str(workdir.parent / "data.jsonl"))
    assert code == 0, err
    (folder,) = (workdir / "runs").iterdir()
    assert folder.name.startswith("score-heads-") and (folder / "scores_raw.csv").is_file()


def test_out_naming_a_file_is_refused(workdir, loads, capsys):
    data = str(workdir.parent / "data.jsonl")
    (workdir / "taken").write_text("keep me")
    code, err = run(capsys, "--data", data, "--out", "taken")
    assert code == 2 and "--out taken is an existing file, not a folder" in err
    code, err = run(capsys, "--data", data, "--out", "taken/run")
    assert code == 2 and "taken is a file, so the folder cannot be made there" in err
    assert (workdir / "taken").read_text() == "keep me"
    assert [p.name for p in workdir.iterdir()] == ["taken"] and loads == []


@pytest.mark.parametrize(
    "key,value,message",
    [
        ("batch-size", True, "expected an integer, got True (bool)"),
        ("seed", 1.5, "expected an integer, got 1.5 (float)"),
        ("seed", 1.0, "expected an integer, got 1.0 (float)"),
        ("max-length", False, "expected an integer, got False (bool)"),
        ("max-samples", 2.5, "expected an integer, got 2.5 (float)"),
        ("threads", 0, "expected a positive integer, got 0"),
        ("lambda-ent", True, "expected a number, got True (bool)"),
        ("lambda-task", float("nan"), "expected a finite number, got nan"),
        ("lambda-ent", float("inf"), "expected a finite number, got inf"),
        ("layers", [], "at least one index"),
        ("heads", "-1", "indices >= 0"),
        ("heads", -2, "indices >= 0"),
        ("layers", [0, True], "expected 'all' or indices"),
        ("layers", "3-1", "indices >= 0"),
        ("model", None, "expected a string, got None"),
        ("data", 5, "expected a string, got 5 (int)"),
    ],
)
def test_yaml_values_of_the_wrong_type_are_refused(
    workdir, loads, capsys, tmp_path, key, value, message
):
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({key: value}))
    code, err = run(capsys, "--config", str(config))
    assert code == 2 and f"run.yaml: key {key!r}: " in err and message in err
    assert list(workdir.iterdir()) == [] and loads == []


@pytest.mark.parametrize(
    "flag,value,message",
    [
        ("--seed", "1.5", "expected an integer, got '1.5'"),
        ("--batch-size", "0", "expected a positive integer, got '0'"),
        ("--threads", "two", "expected an integer, got 'two'"),
        ("--lambda-ent", "nan", "expected a finite number, got 'nan'"),
        ("--lambda-task", "-inf", "expected a finite number, got '-inf'"),
        ("--layers", "2-1", "indices >= 0"),
    ],
)
def test_flags_of_the_wrong_type_are_refused(workdir, capsys, flag, value, message):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["score-heads", f"{flag}={value}"])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err
    assert list(workdir.iterdir()) == []


def test_threads_are_set_for_the_model_and_restored(workdir, loads, capsys, restore_threads):
    torch.set_num_threads(2)
    data = str(workdir.parent / "data.jsonl")
    code, err = run(capsys, "--data", data, "--threads", "1", "--out", "one")
    assert code == 0, err
    config = workdir / "threads.yaml"
    config.write_text("threads: 3\n")
    code, err = run(capsys, "--data", data, "--config", str(config), "--out", "three")
    assert code == 0, err
    code, err = run(capsys, "--data", data, "--out", "default")
    assert code == 0, err
    assert loads == [1, 3, 1]  # the default is one thread
    assert torch.get_num_threads() == 2
    assert yaml.safe_load((workdir / "three" / "config.yaml").read_text())["threads"] == 3
