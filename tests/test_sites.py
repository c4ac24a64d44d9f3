import pytest

import interventions as iv
from interventions.sites import LAYER_KINDS, MODEL_KINDS, Site, all_sites, expand, parse


def test_round_trip_every_site():
    for site in all_sites(3):
        assert parse(str(site)) == site
    assert len(all_sites(3)) == len(MODEL_KINDS) + 3 * len(LAYER_KINDS)


def test_expand_wildcard_and_range():
    assert expand("layers.*.attn.heads", 3) == [Site("attn.heads", i) for i in range(3)]
    assert expand("layers.3:6.resid_post") == [Site("resid_post", i) for i in (3, 4, 5)]
    assert expand("layers.1:.mlp.out", 3) == [Site("mlp.out", 1), Site("mlp.out", 2)]
    assert expand(["logits", "layers.0.attn.in"]) == [Site("logits"), Site("attn.in", 0)]


def test_expanded_names_are_fresh_lists_and_errors_repeat():
    """Names are expanded once and remembered: callers still get their own list, and a bad
    name fails every time (failures are not remembered)."""
    first = expand("layers.*.attn.heads", 3)
    first.append(Site("logits"))
    assert expand("layers.*.attn.heads", 3) == [Site("attn.heads", i) for i in range(3)]
    for _ in range(2):
        with pytest.raises(ValueError, match="out of range"):
            expand("layers.5.attn.heads", 3)


def test_layer_range_is_the_site_grammar():
    for spec in ("2", "*", "1:3", ":2", "1:"):
        expected = [site.layer for site in expand(f"layers.{spec}.resid_post", 4)]
        assert iv.layer_range(spec, 4) == expected
    with pytest.raises(ValueError, match="out of range: the model has 4 layers"):
        iv.layer_range("2:6", 4)
    with pytest.raises(ValueError, match="expected a number, '\\*' or 'start:stop'"):
        iv.layer_range("two", 4)
    with pytest.raises(ValueError, match="empty layer range"):
        iv.layer_range("3:3", 4)


def test_unknown_name_lists_close_names():
    with pytest.raises(ValueError, match=r"unknown site 'layers.3.attn.head'.*layers.3.attn.heads"):
        parse("layers.3.attn.head")
    with pytest.raises(ValueError, match="Did you mean: logits"):
        parse("logit")


def test_layer_out_of_range_and_bad_ranges():
    with pytest.raises(ValueError, match="has 3 layers"):
        parse("layers.3.resid_pre", n_layers=3)
    with pytest.raises(ValueError, match="empty layer range"):
        expand("layers.5:2.resid_pre")
    with pytest.raises(ValueError, match="needs the model's layer count"):
        expand("layers.*.resid_pre")
    with pytest.raises(ValueError, match="exactly one site"):
        parse("layers.*.resid_pre", n_layers=3)


def test_site_value_checks():
    with pytest.raises(ValueError, match="has no layer"):
        Site("logits", 2)
    with pytest.raises(ValueError, match="needs a layer index"):
        Site("attn.heads")
    assert iv.Site("attn.heads", 4).is_head_site


def test_range_messages_say_what_is_wrong():
    with pytest.raises(
        ValueError,
        match=r"'layers.5:.mlp.out' starts at layer 5, but the model has 3 layers \(0..2\)",
    ):
        expand("layers.5:.mlp.out", 3)
    with pytest.raises(ValueError, match="starts at layer 4, but the model has 4 layers"):
        iv.layer_range("4:", 4)
    with pytest.raises(ValueError, match=r"stop 2 is not greater than start 2 .* 2:3 is layer 2"):
        expand("layers.2:2.resid_pre", 3)
    with pytest.raises(ValueError, match="stop 1 is not greater than start 3"):
        expand("layers.3:1.resid_pre")
    with pytest.raises(ValueError, match="cannot be negative .*last layer is 2"):
        expand("layers.-1.resid_pre", 3)
    with pytest.raises(ValueError, match="expected a number, '\\*' or 'start:stop'"):
        expand("layers.\u00b2.resid_pre", 3)  # '²'.isdigit(), but int('²') fails


def test_a_key_that_is_not_a_site_is_a_type_error():
    message = r"a site is a str such as 'layers.3.attn.heads' or an iv.Site, got int 5"
    with pytest.raises(TypeError, match=message):
        expand(5)
    with pytest.raises(TypeError, match=message):
        expand(["logits", 5], 3)
    with pytest.raises(TypeError, match="got bytes"):
        expand(b"logits")
    with pytest.raises(TypeError, match="got list"):
        parse(["logits"])  # named one site, but is not one
    assert expand([]) == []  # an empty list is refused by the callers that need sites


def test_site_layers_are_integers_not_bools():
    import numpy as np

    with pytest.raises(ValueError, match=r"needs a layer index >= 0, got True \(bool\)"):
        Site("attn.heads", True)
    with pytest.raises(ValueError, match=r"got 1.0 \(float\)"):
        Site("attn.heads", 1.0)
    site = Site("attn.heads", np.int64(2))  # e.g. an argmax over head scores
    assert type(site.layer) is int and str(site) == "layers.2.attn.heads"


def test_layer_lists_expand_in_the_order_written():
    assert expand("layers.3,5,9.resid_post") == [Site("resid_post", i) for i in (3, 5, 9)]
    assert expand("layers.1,4:6.mlp.out") == [Site("mlp.out", i) for i in (1, 4, 5)]
    assert expand("layers.5,0.attn.v", 6) == [Site("attn.v", 5), Site("attn.v", 0)]
    assert expand("layers.0,2:.attn.q", 4) == [Site("attn.q", i) for i in (0, 2, 3)]
    assert iv.layer_range("1,3", 4) == [1, 3]


@pytest.mark.parametrize(
    "pattern, message",
    [
        ("layers.3,,5.resid_post", "an empty item"),
        ("layers.3,.resid_post", "an empty item"),
        ("layers.*,2.resid_post", "'\\*' is every layer, not a list item"),
        ("layers.3,x.resid_post", "bad layer index 'x'"),
        ("layers.2,1:3.resid_post", "layer 2 is listed twice"),
        ("layers.1,-2.resid_post", "cannot be negative"),
    ],
)
def test_bad_layer_lists_name_the_valid_forms(pattern, message):
    with pytest.raises(ValueError, match=message) as error:
        expand(pattern, 4)
    if "twice" not in message and "negative" not in message:
        assert "'3,5,9' or '1,4:6'" in str(error.value)


def test_a_layer_list_checks_every_layer_and_names_many_sites():
    with pytest.raises(ValueError, match="out of range: the model has 4 layers"):
        expand("layers.1,7.resid_post", 4)
    with pytest.raises(ValueError, match="names 2 sites; expected exactly one"):
        parse("layers.1,2.resid_post", 4)


def test_unknown_site_names_every_form_of_layers_and_the_module_site():
    with pytest.raises(ValueError, match="a list '3,5,9'; any module by path: 'module:<path>"):
        parse("layers.3.resid_middle")


def test_q_k_v_sites_are_head_sites_between_attn_in_and_the_pattern():
    assert [k for k in LAYER_KINDS if k.startswith("attn.")][:4] == [
        "attn.in",
        "attn.q",
        "attn.k",
        "attn.v",
    ]
    assert all(Site(kind, 0).is_head_site for kind in ("attn.q", "attn.k", "attn.v"))
    assert parse("layers.2.attn.k") == Site("attn.k", 2)


def test_module_sites_are_one_site_with_no_layer():
    site = parse("module:model.layers.3.mlp.act_fn:output")
    assert site == Site("module:model.layers.3.mlp.act_fn:output")
    assert (site.layer, site.module_path, site.module_end) == (
        None,
        "model.layers.3.mlp.act_fn",
        "output",
    )
    assert str(site) == "module:model.layers.3.mlp.act_fn:output"
    assert expand(["module:lm_head:input", "logits"]) == [
        Site("module:lm_head:input"),
        Site("logits"),
    ]
    assert Site("resid_pre", 0).module_path is None and not site.is_head_site


@pytest.mark.parametrize(
    "name",
    [
        "module:model.norm",  # no end
        "module:model.norm:outputs",
        "module:model.layers.*.mlp:output",  # one module per site: no wildcards
        "module::output",
        "module:model..norm:input",
    ],
)
def test_bad_module_sites_name_the_form(name):
    with pytest.raises(
        ValueError, match="expected 'module:<path>:output' or 'module:<path>:input'"
    ):
        parse(name)
    with pytest.raises(ValueError, match="has no layer"):
        Site("module:model.norm:output", 1)
