"""API keys bound to tenants (modm.policy.api_keys and the auth config): parsing, lookups, refusals."""

import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from modm.config.schema import AuthConfig
from modm.policy.api_keys import ApiKeyRing, AuthenticationError, parse_api_keys_file


def sha(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def ring(**auth) -> ApiKeyRing:
    return ApiKeyRing.from_config(AuthConfig.model_validate(auth))


def test_no_keys_means_an_open_api():
    assert ApiKeyRing.from_config(AuthConfig()) is None


def test_inline_and_file_keys_map_to_their_tenants(tmp_path):
    keys = tmp_path / "keys.txt"
    keys.write_text(f"# operator keys\n{sha('k-bob')} bob   # added 2026-11\n\n{sha('k-carol')}\tcarol\n")
    keyring = ring(api_keys=[{"sha256": sha("k-alice"), "tenant": "alice"}], api_keys_file=str(keys))
    assert keyring.tenant_for("Bearer k-alice") == "alice"
    assert keyring.tenant_for("bearer   k-bob ") == "bob"
    assert keyring.tenant_for("Bearer k-carol") == "carol"


@pytest.mark.parametrize(
    "header, reason",
    [
        (None, "missing API key"),
        ("", "missing API key"),
        ("   ", "missing API key"),
        ("k-alice", "Bearer <key>"),
        ("Basic azphbGljZQ==", "Bearer <key>"),
        ("Bearer", "Bearer <key>"),
        ("Bearer k-mallory", "invalid API key"),
        ("Bearer " + "k" * 10_000, "longer than"),
        ("Bearer клю́ч", "invalid API key"),
        ("Bearer k-alice\x00", "invalid API key"),
    ],
)
def test_refusals_give_a_reason(header, reason):
    keyring = ring(api_keys=[{"sha256": sha("k-alice"), "tenant": "alice"}])
    with pytest.raises(AuthenticationError, match=reason):
        keyring.tenant_for(header)


@given(st.text(max_size=600))
def test_any_header_value_gives_a_tenant_or_an_authentication_error(header):
    keyring = ring(api_keys=[{"sha256": sha("k-alice"), "tenant": "alice"}])
    try:
        assert keyring.tenant_for(header) == "alice"
    except AuthenticationError as err:
        assert str(err)


@pytest.mark.parametrize(
    "text, message",
    [
        ("abc alice\n", ":1: sha256 must be 64"),
        (f"{sha('a')}\n", ":1: expected '<sha256-hex> <tenant>'"),
        (f"# c\n{sha('a')} alice extra\n", ":2: expected"),
        (f"{sha('a')} ../etc\n", ":1: tenant names must be"),
        (f"{sha('a').upper()} alice\n", "lower-case hex"),
        (f"{sha('a')} alice\n{sha('a')} bob\n", ":2: this key hash is already bound to tenant 'alice'"),
    ],
)
def test_malformed_keys_files_name_the_line(text, message):
    with pytest.raises(ValueError, match=message):
        parse_api_keys_file(text, "keys.txt")


def test_unreadable_empty_or_conflicting_key_sources_are_refused(tmp_path):
    with pytest.raises(ValueError, match="cannot read"):
        ring(api_keys_file=str(tmp_path / "missing.txt"))
    (tmp_path / "binary").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ValueError, match="cannot read"):
        ring(api_keys_file=str(tmp_path / "binary"))
    (tmp_path / "empty").write_text("# nothing yet\n")
    with pytest.raises(ValueError, match="holds no key"):
        ring(api_keys_file=str(tmp_path / "empty"))
    (tmp_path / "one").write_text(f"{sha('k')} alice\n")
    with pytest.raises(ValueError, match="bound to two tenants"):
        ring(api_keys_file=str(tmp_path / "one"), api_keys=[{"sha256": sha("k"), "tenant": "bob"}])
