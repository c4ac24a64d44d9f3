"""Loading: ``load`` on a local folder (a tiny Llama with a word-level tokenizer), the cache of
dequantised GGUF models (its logic on a tiny model standing in for the slow conversion), and the
real model (SmolLM2-135M-Instruct from the bundled GGUF) with its Qwen2 twin."""

import os
import threading
import time

import pytest
import torch

import interventions as iv
from interventions import models
from interventions.models import CACHE_ENV, drop_gguf_markers, load, tiny, to_qwen2

PROMPTS = ["The capital of France is", "My favourite colour is blue because"]
WORDS = ["<unk>", "<s>", "</s>", "the", "cat", "sat", "on", "a", "mat"]


@pytest.fixture
def tiny_folder(tmp_path):
    """A folder as ``save_pretrained`` leaves it: a tiny random Llama and a word-level fast
    tokenizer with the tokenizers' defaults (padding on the right, no pad token)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    words.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=words, unk_token="<unk>", bos_token="<s>", eos_token="</s>"
    )
    assert tokenizer.padding_side == "right" and tokenizer.pad_token is None
    tokenizer.save_pretrained(tmp_path)
    tiny("llama", n_kv_heads=2).save_pretrained(tmp_path)
    return tmp_path


def test_load_returns_a_tokenizer_that_pads_on_the_left(tiny_folder):
    model, tokenizer = load(str(tiny_folder))
    assert tokenizer.padding_side == "left" and tokenizer.pad_token == "</s>"
    batch = tokenizer(["the cat sat on a mat", "the cat"], return_tensors="pt", padding=True)
    pad, cat, mat = (tokenizer.convert_tokens_to_ids(w) for w in ("</s>", "cat", "mat"))
    # position -1 is every row's last real token, so a capture at -1 reads what it should
    assert batch.input_ids[:, -1].tolist() == [mat, cat]
    assert batch.input_ids[1, :4].tolist() == [pad] * 4
    assert batch.attention_mask[1].tolist() == [0, 0, 0, 0, 1, 1]
    assert not model.training


def test_load_gives_the_dtype_asked_for(tiny_folder):
    # transformers < 4.56 names the argument torch_dtype
    model, _ = load(str(tiny_folder), dtype=torch.bfloat16)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}


class FakeConversion:
    """Stands in for ``models._dequantised`` (the ~40 s GGUF conversion): a tiny Llama and the
    word-level tokenizer of ``tiny_folder``, and a count of the calls."""

    def __init__(self, folder, delay: float = 0.0):
        self.folder, self.delay, self.calls = folder, delay, 0

    def __call__(self, path, options):
        from transformers import AutoTokenizer

        self.calls += 1
        time.sleep(self.delay)  # long enough for a second loader to arrive meanwhile
        model = tiny("llama", n_kv_heads=2).to(options["dtype"])
        return model, AutoTokenizer.from_pretrained(str(self.folder))


@pytest.fixture
def fake_gguf(tmp_path, tiny_folder, monkeypatch):
    """``(path, conversion)``: a 3 MiB ``.gguf`` file, and the fake conversion ``load`` calls."""
    path = tmp_path / "fake.gguf"
    path.write_bytes(os.urandom(3 << 20))
    conversion = FakeConversion(tiny_folder)
    monkeypatch.setattr(models, "_dequantised", conversion)
    monkeypatch.delenv(CACHE_ENV, raising=False)
    return path, conversion


def cache_folders(root):
    return sorted(p.name for p in root.iterdir() if not p.name.endswith(".lock"))


def same_state(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_gguf_is_converted_once_then_read_from_the_cache(fake_gguf, tmp_path):
    path, conversion = fake_gguf
    root = tmp_path / "cache"
    first, tokenizer = load(str(path), cache=root)
    (folder,) = cache_folders(root)
    assert folder.startswith("fake-float32-")
    second, cached_tokenizer = load(str(path), cache=root)
    assert conversion.calls == 1
    assert second.config.name_or_path == str(root / folder)
    assert same_state(first, second)
    assert cached_tokenizer("the cat sat").input_ids == tokenizer("the cat sat").input_ids
    assert cached_tokenizer.padding_side == "left" and cached_tokenizer.pad_token == "</s>"


def test_gguf_cache_is_keyed_by_dtype_and_file(fake_gguf, tmp_path):
    path, conversion = fake_gguf
    root = tmp_path / "cache"
    load(str(path), cache=root)
    model, _ = load(str(path), cache=root, dtype=torch.bfloat16)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert conversion.calls == 2 and len(cache_folders(root)) == 2
    data = bytearray(path.read_bytes())
    data[-1] ^= 1  # another file of the same size: its last MiB differs
    path.write_bytes(bytes(data))
    load(str(path), cache=root)
    assert conversion.calls == 3 and len(cache_folders(root)) == 3


@pytest.mark.parametrize("damage", ["flip", "truncate", "delete", "manifest"])
def test_damaged_cache_is_detected_and_rebuilt(fake_gguf, tmp_path, damage):
    path, conversion = fake_gguf
    root = tmp_path / "cache"
    first, _ = load(str(path), cache=root)
    (name,) = cache_folders(root)
    weights = root / name / "model.safetensors"
    if damage == "flip":  # same size, one bit changed
        data = bytearray(weights.read_bytes())
        data[-5] ^= 1
        weights.write_bytes(bytes(data))
    elif damage == "truncate":
        weights.write_bytes(weights.read_bytes()[:100])
    elif damage == "delete":
        weights.unlink()
    else:
        (root / name / "interventions-cache.json").write_text("{")
    rebuilt, _ = load(str(path), cache=root)
    assert conversion.calls == 2 and cache_folders(root) == [name]
    assert same_state(first, rebuilt)
    assert models._is_complete(root / name)
    load(str(path), cache=root)
    assert conversion.calls == 2  # the rebuilt folder is trusted again


def test_interrupted_write_leaves_no_folder_a_later_load_trusts(fake_gguf, tmp_path, monkeypatch):
    path, conversion = fake_gguf
    root = tmp_path / "cache"
    real_sha256 = models._sha256

    def interrupted(file):
        raise KeyboardInterrupt  # after the weights are written, before the manifest

    monkeypatch.setattr(models, "_sha256", interrupted)
    with pytest.raises(KeyboardInterrupt):
        load(str(path), cache=root)
    assert cache_folders(root) == []  # the temporary folder is gone too
    monkeypatch.setattr(models, "_sha256", real_sha256)
    # a process killed mid-write leaves its temporary folder: it is never read, and cleared
    name = models._cache_name(path, torch.float32)
    killed = root / f".{name}.tmp-killed"
    killed.mkdir()
    (killed / "model.safetensors").write_bytes(b"half")
    load(str(path), cache=root)
    assert conversion.calls == 2 and cache_folders(root) == [name]


def test_cache_off_by_argument_or_environment(fake_gguf, tmp_path, monkeypatch):
    path, conversion = fake_gguf
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    load(str(path), cache=False)
    monkeypatch.setenv(CACHE_ENV, "off")
    load(str(path))
    assert conversion.calls == 2 and not (tmp_path / "xdg").exists()
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "chosen"))
    load(str(path))
    assert len(cache_folders(tmp_path / "chosen")) == 1 and not (tmp_path / "xdg").exists()
    monkeypatch.delenv(CACHE_ENV)
    load(str(path))  # the default: stats.default_cache_dir("models")
    assert len(cache_folders(tmp_path / "xdg" / "interventions" / "models")) == 1


def test_unwritable_cache_is_warned_about_and_the_model_still_loads(fake_gguf, tmp_path):
    path, conversion = fake_gguf
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.warns(UserWarning, match="cannot write the model cache"):
        model, _ = load(str(path), cache=blocker / "models")
    assert conversion.calls == 1 and not model.training


def test_two_loaders_at_once_convert_once_and_share_the_cache(fake_gguf, tmp_path):
    path, conversion = fake_gguf
    conversion.delay = 1.0
    root = tmp_path / "cache"
    results, errors = [], []

    def loader():
        try:
            results.append(load(str(path), cache=root)[0])
        except Exception as error:  # reported by the assertion below
            errors.append(error)

    threads = [threading.Thread(target=loader) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == [] and conversion.calls == 1
    assert same_state(*results)
    (name,) = cache_folders(root)
    assert models._is_complete(root / name)


@pytest.mark.parametrize("cache", [None, 1, "", "  "])
def test_bad_cache_argument_is_refused(fake_gguf, cache):
    path, conversion = fake_gguf
    with pytest.raises(TypeError, match="cache must be True"):
        load(str(path), cache=cache)
    assert conversion.calls == 0


def test_gguf_markers_are_dropped_only_from_dense_weights(tmp_path):
    # transformers 5's GGUF quantizer: before it, a GGUF-loaded model carried no markers
    import transformers

    quantizer_gguf = pytest.importorskip("transformers.quantizers.quantizer_gguf")
    GgufConfig = getattr(transformers, "GgufConfig", None)
    if GgufConfig is None or not hasattr(quantizer_gguf, "GgufHfQuantizer"):
        pytest.skip(f"transformers {transformers.__version__} has no GGUF quantizer")

    def marked():
        model = tiny("llama", n_kv_heads=2)
        model.hf_quantizer = quantizer_gguf.GgufHfQuantizer(GgufConfig())
        model.config.quantization_config = model.hf_quantizer.quantization_config
        model.is_quantized = True
        return model

    model = marked()
    with pytest.raises(ValueError, match="not serializable"):
        model.save_pretrained(tmp_path / "refused")
    drop_gguf_markers(model).save_pretrained(tmp_path / "saved")
    assert not hasattr(model.config, "quantization_config")
    packed = marked()
    packed.model.layers[0].mlp.register_buffer("blocks", torch.zeros(4, dtype=torch.uint8))
    assert drop_gguf_markers(packed).hf_quantizer is not None


@pytest.fixture(scope="module")
def inputs(real_model):
    _, tokenizer = real_model
    return tokenizer(PROMPTS, return_tensors="pt", padding=True)


@pytest.mark.real
def test_real_tokenizer_pads_on_the_left(real_model, inputs):
    _, tokenizer = real_model
    assert tokenizer.padding_side == "left"
    assert inputs["attention_mask"][:, -1].tolist() == [1, 1]
    assert inputs["attention_mask"][:, 0].tolist() == [0, 1]  # the shorter prompt is padded


@pytest.mark.real
def test_real_geometry_and_head_shape(real_model, inputs):
    model, _ = real_model
    g = iv.geometry(model)
    assert (g.n_layers, g.n_heads, g.n_kv_heads, g.d_head, g.d_model) == (30, 9, 3, 64, 576)
    with torch.no_grad(), iv.capture(model, ["layers.*.attn.heads", "layers.5.attn.out"]) as cache:
        bare = model(**inputs).logits
    b, t = inputs["input_ids"].shape
    assert cache["layers.12.attn.heads"].shape == (b, t, 9, 64)
    a = iv.adapter(model)
    w = a.weight(a.block_module(model, 5, a.o_proj))
    torch.testing.assert_close(
        cache["layers.5.attn.heads"].flatten(2) @ w.T,
        cache["layers.5.attn.out"],
        atol=1e-4,
        rtol=1e-4,
    )
    with torch.no_grad(), iv.intervene(model, {}):
        assert torch.equal(model(**inputs).logits, bare)


@pytest.mark.real
def test_qwen2_conversion_gives_the_same_logits(real_model, inputs):
    model, _ = real_model
    qwen = to_qwen2(model)
    assert qwen.config.model_type == "qwen2" and iv.adapter(qwen).name == "qwen2"
    with torch.no_grad():
        torch.testing.assert_close(qwen(**inputs).logits, model(**inputs).logits, atol=1e-4, rtol=0)


@pytest.mark.real
def test_steering_really_shifts_generation(real_model):
    model, tokenizer = real_model
    positive = ["I love this, it is wonderful and makes me happy.", "What a great and joyful day!"]
    negative = ["I hate this, it is awful and makes me sad.", "What a terrible and miserable day!"]
    site = "layers.10.resid_post"
    means = []
    for texts in (positive, negative):
        batch = tokenizer(texts, return_tensors="pt", padding=True)
        with torch.no_grad(), iv.capture(model, site, positions=-1) as cache:
            model(**batch)
        means.append(cache[site].mean(0))
    direction = means[0] - means[1]
    prompt = tokenizer("Today I feel", return_tensors="pt")
    settings = dict(max_new_tokens=12, do_sample=False, pad_token_id=tokenizer.pad_token_id)

    def happy_minus_sad(plan):
        with torch.no_grad(), iv.intervene(model, plan):
            out = model.generate(
                **prompt, **settings, output_logits=True, return_dict_in_generate=True
            )
        first = out.logits[0][0].log_softmax(-1)
        happy, sad = (
            tokenizer(w, add_special_tokens=False).input_ids[0] for w in (" happy", " sad")
        )
        return (first[happy] - first[sad]).item(), tokenizer.decode(out.sequences[0])

    bare_margin, bare_text = happy_minus_sad({})
    up_margin, up_text = happy_minus_sad({site: iv.AddBias(direction, alpha=4.0)})
    down_margin, _ = happy_minus_sad({site: iv.AddBias(direction, alpha=-4.0)})
    margins = (bare_margin, up_margin, down_margin)
    assert up_margin > bare_margin + 1.0 and down_margin < bare_margin - 0.5, margins
    assert up_text != bare_text


@pytest.fixture(scope="module")
def gguf_and_cached(tmp_path_factory):
    """The bundled model loaded twice into an empty cache folder: through the GGUF (writing the
    cache), then from the cache. The only GGUF load of this file besides ``real_model``."""
    root = tmp_path_factory.mktemp("model-cache")
    converted = load(cache=root)
    cached = load(cache=root)
    return converted, cached, root


@pytest.mark.real
def test_real_cached_model_is_bit_identical(gguf_and_cached):
    (converted, tokenizer), (cached, cached_tokenizer), root = gguf_and_cached
    inputs = tokenizer(PROMPTS, return_tensors="pt", padding=True)
    (name,) = cache_folders(root)
    assert cached.config.name_or_path == str(root / name)
    assert same_state(converted, cached)
    with torch.no_grad():
        assert torch.equal(converted(**inputs).logits, cached(**inputs).logits)
    ignore = ("_name_or_path", "name_or_path")
    a, b = (
        {k: v for k, v in m.config.to_dict().items() if k not in ignore}
        for m in (converted, cached)
    )
    assert a == b
    assert converted.generation_config.to_dict() == cached.generation_config.to_dict()
    chat = [{"role": "user", "content": "What is the capital of France?"}]
    texts = [*PROMPTS, "héllo wörld 123\n\t<|im_start|>user"]
    for t in (tokenizer, cached_tokenizer):
        assert t.padding_side == "left"
    assert cached_tokenizer(texts).input_ids == tokenizer(texts).input_ids
    assert cached_tokenizer.apply_chat_template(chat) == tokenizer.apply_chat_template(chat)
    assert cached_tokenizer.special_tokens_map == tokenizer.special_tokens_map


@pytest.mark.real
def test_real_bundled_model_round_trips_save_pretrained(gguf_and_cached, tmp_path):
    from transformers import AutoModelForCausalLM

    (converted, tokenizer), _, _ = gguf_and_cached
    inputs = tokenizer(PROMPTS, return_tensors="pt", padding=True)
    assert getattr(converted, "hf_quantizer", None) is None
    converted.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    with torch.no_grad():
        assert torch.equal(reloaded(**inputs).logits, converted(**inputs).logits)
