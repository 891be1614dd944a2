"""The bracket-syntax form decoder and typed parameter access."""

from __future__ import annotations

from urllib.parse import parse_qsl, urlencode

import pytest
from hypothesis import given
from hypothesis import strategies as st

from stripe_emulator.errors import StripeError
from stripe_emulator.forms import Params, apply_metadata, decode, query_pairs


def test_nested_hashes_lists_and_appends() -> None:
    pairs = [
        ("metadata[github_user_id]", "42"),
        ("line_items[1][price]", "price_b"),
        ("line_items[0][price]", "price_a"),
        ("line_items[0][quantity]", "2"),
        ("expand[]", "customer"),
        ("expand[]", "subscription"),
        ("created[gte]", "10"),
        ("plain", "x"),
    ]
    assert decode(pairs) == {
        "metadata": {"github_user_id": "42"},
        "line_items": [{"price": "price_a", "quantity": "2"}, {"price": "price_b"}],
        "expand": ["customer", "subscription"],
        "created": {"gte": "10"},
        "plain": "x",
    }


def test_numeric_metadata_keys_stay_a_hash() -> None:
    assert decode([("metadata[0]", "a")]) == {"metadata": {"0": "a"}}


def test_conflicting_shapes_are_rejected() -> None:
    with pytest.raises(StripeError):
        decode([("a", "1"), ("a[b]", "2")])


def test_sdk_encoding_round_trip() -> None:
    # The SDK's own encoder: arrays become a[0], a[1]; nested dicts use brackets.
    from stripe._encode import _api_encode

    params = {"items": [{"price": "p", "metadata": {"k": "v"}}], "types": ["a.b", "c.*"]}
    encoded = urlencode(list(_api_encode(params)))
    from urllib.parse import parse_qsl

    assert decode(parse_qsl(encoded)) == params


def test_unknown_parameters_are_reported_with_their_full_name() -> None:
    params = Params(decode([("recurring[interval]", "month"), ("recurring[bogus]", "1")]))
    recurring = params.hash("recurring")
    assert recurring is not None
    assert recurring.string("interval") == "month"
    with pytest.raises(StripeError) as raised:
        params.finish()
    assert raised.value.code == "parameter_unknown"
    assert raised.value.param == "recurring[bogus]"


def test_typed_values() -> None:
    params = Params({"n": "12", "b": "true", "bad": "x"})
    assert params.integer("n") == 12
    assert params.boolean("b") is True
    with pytest.raises(StripeError) as raised:
        params.integer("bad")
    assert raised.value.code == "parameter_invalid_integer"


def test_metadata_changes_unset_with_empty_strings() -> None:
    current = {"a": "1", "b": "2"}
    changes = Params(decode([("metadata[a]", ""), ("metadata[c]", "3")])).metadata()
    assert apply_metadata(current, changes) == {"b": "2", "c": "3"}
    assert apply_metadata(current, Params({"metadata": ""}).metadata()) == {}
    assert current == {"a": "1", "b": "2"}


@given(
    st.lists(
        st.text(alphabet="ab[]0=&+%2BE5x~ é", max_size=12)
        | st.sampled_from(["%E2%82%AC", "%ZZ", "%ff", "types%5B0%5D=customer.created"]),
        max_size=6,
    ).map("&".join)
)
def test_query_pairs_decode_as_parse_qsl_does(encoded: str) -> None:
    """Its pairs are decoded once and kept: the same as the standard library's, always."""
    assert query_pairs(encoded) == parse_qsl(encoded, keep_blank_values=True)
    assert query_pairs(encoded) == parse_qsl(encoded, keep_blank_values=True)  # from its cache
