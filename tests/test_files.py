"""The package's tensor files: atomic, format-checked safetensors."""

import re

import pytest
import torch

from interventions import files

FORMAT = "tests.Tensors/1"


def test_save_tensors_round_trips_tensors_and_metadata(tmp_path):
    from interventions.files import load_tensors, save_tensors

    base = torch.arange(12.0).reshape(3, 4).requires_grad_()
    tensors = {"whole": base, "row": base[1], "columns": base[:, ::2], "ints": torch.arange(3)}
    path = save_tensors(tmp_path / "a" / "t.safetensors", tensors, format=FORMAT,
                        metadata={"count": "3"})  # fmt: skip
    assert path == tmp_path / "a" / "t.safetensors"
    loaded, metadata = load_tensors(str(path), format=FORMAT)
    assert metadata == {"count": "3"}
    assert set(loaded) == set(tensors)
    for name, tensor in tensors.items():
        assert torch.equal(loaded[name], tensor.detach()), name
        assert not loaded[name].requires_grad
    assert load_tensors(save_tensors(path, {}, format=FORMAT), format=FORMAT) == ({}, {})


def test_a_failed_or_interrupted_save_tensors_leaves_the_file_and_nothing_else(
    tmp_path, monkeypatch
):
    path = files.save_tensors(tmp_path / "t.safetensors", {"x": torch.ones(2)}, format=FORMAT)
    saved = path.read_bytes()

    def interrupted(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"partial")
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(files, "save_file", interrupted)
        for target in (path, tmp_path / "new" / "deeper" / "t.safetensors"):
            with pytest.raises(KeyboardInterrupt):
                files.save_tensors(target, {"x": torch.zeros(2)}, format=FORMAT)
    bad_inputs = [
        ({"x": [1.0]}, {}, TypeError, "names \\(str\\) to tensors, got 'x': list"),
        ({1: torch.ones(1)}, {}, TypeError, "got 1: Tensor"),
        ([torch.ones(1)], {}, TypeError, "tensors must map names to tensors, got list"),
        ({"x": torch.ones(1, device="meta")}, {}, ValueError, "'x' is on the meta device"),
        ({"x": torch.ones(1)}, {"n": 3}, TypeError, "strings to strings .* got 'n': 3 \\(int\\)"),
        ({"x": torch.ones(1)}, {"format": "x"}, ValueError, "'format' is reserved"),
    ]
    for tensors, metadata, error, message in bad_inputs:
        with pytest.raises(error, match=message):
            files.save_tensors(path, tensors, format=FORMAT, metadata=metadata)
    with pytest.raises(TypeError, match="format must be a non-empty string .* got None"):
        files.save_tensors(path, {"x": torch.ones(1)}, format=None)
    assert path.read_bytes() == saved
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.safetensors"]


def test_load_tensors_names_the_path_and_what_it_found(tmp_path):
    from safetensors.torch import save_file

    from interventions.files import load_tensors, save_tensors

    other = save_tensors(tmp_path / "other.safetensors", {"x": torch.ones(1)}, format="b/2")
    plain = tmp_path / "plain.safetensors"
    save_file({"x": torch.ones(1)}, plain)
    (tmp_path / "text.safetensors").write_text("not tensors")
    cases = [
        (tmp_path / "missing.safetensors", FileNotFoundError, "missing.safetensors does not exist"),
        (tmp_path, ValueError, f"{re.escape(str(tmp_path))} is not a file"),
        (tmp_path / "text.safetensors", ValueError, "text.safetensors is not a readable safetens"),
        (other, ValueError, f"other.safetensors is a 'b/2' file, not a '{FORMAT}' file"),
        (plain, ValueError, "plain.safetensors is a safetensors file without a 'format' entry"),
    ]
    for path, error, message in cases:
        with pytest.raises(error, match=message):
            load_tensors(path, format=FORMAT)
    with pytest.raises(TypeError, match="format must be a non-empty string"):
        load_tensors(other, format="")
