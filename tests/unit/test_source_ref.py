"""Source strings, URL scrubbing, address and file-name rules, settings: no network."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lora_ops.fetching.http_client import token_for
from lora_ops.fetching.netguard import (
    UnsafeError,
    content_disposition_filename,
    safe_filename,
    safe_join,
    scrub_url,
    vet_address,
)
from lora_ops.fetching.settings import SettingsError, load_settings
from lora_ops.fetching.source_ref import CivitaiRef, HashRef, HFRef, LocalRef, SourceError, UrlRef, parse_source


@pytest.mark.parametrize("text,ref", [
    ("style/a.safetensors", LocalRef("style/a.safetensors")),
    ("urn:air:sdxl:lora:civitai:328553@368189", CivitaiRef(328553, 368189, None, (), "sdxl", "lora")),
    ("air:sd1:checkpoint:civitai:4384@128713+99.safetensors", CivitaiRef(4384, 128713, 99, (), "sd1", "checkpoint")),
    ("sd1:lora:civitai:12", CivitaiRef(12, None, None, (), "sd1", "lora")),
    ("civitai:4384@128713", CivitaiRef(4384, 128713)),
    ("https://civitai.com/models/4384/dreamshaper?modelVersionId=128713", CivitaiRef(4384, 128713)),
    ("https://civitai.red/models/5?modelVersionId=6", CivitaiRef(5, 6)),
    ("https://civitai.com/api/download/models/181248?type=Model&format=SafeTensor&size=pruned&fp=fp16",
     CivitaiRef(None, 181248, None, (("type", "Model"), ("format", "SafeTensor"), ("size", "pruned"), ("fp", "fp16")))),
    ("https://civitai.com/api/download/models/7?fileId=70", CivitaiRef(None, 7, 70)),
    ("hf://org/repo/sub/w.safetensors", HFRef("org/repo", "sub/w.safetensors", "main")),
    ("hf://org/repo@v1.0/w.safetensors", HFRef("org/repo", "w.safetensors", "v1.0")),
    ("hf://datasets/org/set/w.safetensors", HFRef("datasets/org/set", "w.safetensors", "main")),
    ("https://huggingface.co/org/repo/blob/main/a/b.safetensors?download=true",
     HFRef("org/repo", "a/b.safetensors", "main")),
    ("https://hf.co/org/repo/resolve/abc123/b.safetensors", HFRef("org/repo", "b.safetensors", "abc123")),
    ("sha256:" + "ab" * 32, HashRef("sha256", "AB" * 32)),
    ("AutoV2:4F370090E1", HashRef("autov2", "4F370090E1")),
    ("autov3:b9c80b5adeca", HashRef("autov3", "B9C80B5ADECA")),
    ("crc32:EFC17050", HashRef("crc32", "EFC17050")),
    ("https://models.example.org/x.safetensors", UrlRef("https://models.example.org/x.safetensors")),
])
def test_every_source_form_parses(text, ref):
    assert parse_source(text).ref == ref


@pytest.mark.parametrize("text,fragment", [
    ("", "empty"), ("sha256:abc", "64 hexadecimal"), ("autov2:XYZXYZXYZX", "10 hexadecimal"),
    ("civitai:abc", "civitai:<model id>"), ("hf://org/file.safetensors", "hf://<org>/<repo>"),
    ("ftp://host/x.safetensors", "only https"), ("/etc/passwd", "absolute path"),
    ("urn:air:sdxl:lora:huggingface:x", "only Civitai AIRs"),
    ("https://civitai.com/models/²", "expected https://civitai.com/models"),
    ("civitai:" + "9" * 5000, "at most 12 digits"),
    ("https://models.example.org:99999/x", "not a valid URL"),
    ("hf://org/repo/../../../api/whoami-v2", "'..' are not allowed"),
    ("hf://org/repo@../../x/y", "'..' are not allowed"),
    ("https://huggingface.co/org/repo/resolve/main/%2e%2e/%2e%2e/api/whoami-v2", "'..' are not allowed"),
    ("sha256:" + "０" * 64, "0-9 and A-F"),
])
def test_bad_sources_say_what_is_expected(text, fragment):
    with pytest.raises(SourceError, match=fragment):
        parse_source(text)


def test_pasted_token_is_refused_without_repeating_it():
    with pytest.raises(SourceError, match="carries credentials") as e:
        parse_source("https://civitai.com/api/download/models/5?token=SECRET&type=Model")
    assert "SECRET" not in str(e.value)
    assert scrub_url("https://user:pw@host/x?X-Amz-Signature=abc&fp=fp16") == ("https://host/x?fp=fp16", True)


@given(st.text(min_size=1, max_size=40))
def test_scrub_never_keeps_a_token_value(secret):
    from urllib.parse import quote
    url = f"https://civitai.com/api/download/models/1?token={quote(secret)}&type=Model"
    assert f"token={quote(secret)}" not in scrub_url(url)[0]


@pytest.mark.parametrize("host", ["127.0.0.1", "10.1.2.3", "192.168.0.5", "172.16.0.1", "169.254.169.254",
                                  "100.64.0.1", "0.0.0.0", "::1", "fe80::1", "fc00::1", "::ffff:10.0.0.1",
                                  "224.0.0.1", "64:ff9b::a9fe:a9fe", "64:ff9b::7f00:1", "2002:a9fe:a9fe::1",
                                  "::a9fe:a9fe", "::127.0.0.1", "fec0::1"])
def test_internal_addresses_are_refused(host):
    with pytest.raises(UnsafeError, match="refused"):
        vet_address(host, 443)


def test_loopback_only_with_opt_in():
    assert vet_address("127.0.0.1", 80, allow_loopback=True) == ["127.0.0.1"]
    with pytest.raises(UnsafeError, match="private"):
        vet_address("10.0.0.1", 80, allow_loopback=True)


@pytest.mark.parametrize("name,expected", [
    ("lora.safetensors", "lora.safetensors"), ("../../etc/x.safetensors", "x.safetensors"),
    ("a\\b\\c.safetensors", "c.safetensors"), ("na%C3%AFve.safetensors", "naïve.safetensors"),
])
def test_remote_names_become_one_safe_component(name, expected):
    assert safe_filename(name) == expected


@pytest.mark.parametrize("name", ["..", ".hidden", "con.safetensors", "a:b.safetensors", "x.safetensors.",
                                  "bad\x01.safetensors", "x" * 300, "", "\u202egnp.safetensors"])
def test_unsafe_names_are_refused(name):
    with pytest.raises(UnsafeError):
        safe_filename(name)


def test_safe_join_refuses_symlink_escape(tmp_path):
    root = tmp_path / "loras"
    root.mkdir()
    (root / "out").symlink_to(tmp_path)
    with pytest.raises(UnsafeError, match="outside"):
        safe_join(root, "out/evil.safetensors")
    assert safe_join(root, "sub/ok.safetensors") == str(root / "sub" / "ok.safetensors")


def test_content_disposition_prefers_filename_star():
    v = "attachment; filename=\"fallback.safetensors\"; filename*=UTF-8''na%C3%AFve%20v2.safetensors"
    assert content_disposition_filename(v) == "naïve v2.safetensors"
    assert content_disposition_filename('attachment; filename="virileReality_v30BETA3.safetensors"') == \
        "virileReality_v30BETA3.safetensors"
    assert content_disposition_filename(None) is None


def test_tokens_are_bound_to_their_host_families(tmp_path):
    s = load_settings(None, {"CIVITAI_API_TOKEN": "civ", "HF_TOKEN": "hf"})
    assert token_for("https://civitai.com/api/download/models/1", s) == "civ"
    assert token_for("https://civitai.red/api/v1/models/1", s) == "civ"
    assert token_for("https://huggingface.co/org/repo/resolve/main/x", s) == "hf"
    # Exact API hosts only: their storage and CDN subdomains never get a token.
    for other in ("https://evilcivitai.com/x", "https://civitai.com.evil.org/x", "https://r2.cloudflarestorage.com/x",
                  "https://models.example.org/x", "https://cdn-lfs.hf.co/x", "https://cas-bridge.xethub.hf.co/x",
                  "https://cdn-lfs.huggingface.co/x", "https://evil.civitai.com/x"):
        assert token_for(other, s) is None


def test_settings_file_and_environment(tmp_path):
    (tmp_path / "settings.json").write_text(json.dumps({"civitai_token": "from-file", "allowed_hosts": ["A.org"]}))
    s = load_settings(tmp_path, {})
    assert s.civitai_token == "from-file" and s.allowed_hosts == ("a.org",)
    assert "from-file" not in repr(s)
    assert load_settings(tmp_path, {"CIVITAI_API_TOKEN": "env"}).civitai_token == "env"
    (tmp_path / "settings.json").write_text(json.dumps({"alow_loopback": True}))
    with pytest.raises(SettingsError, match="unknown setting 'alow_loopback'"):
        load_settings(tmp_path, {})
    (tmp_path / "settings.json").write_text(json.dumps({"allow_loopback": "yes"}))
    with pytest.raises(SettingsError, match="should be of type bool"):
        load_settings(tmp_path, {})
    (tmp_path / "settings.json").write_text("{not json")
    with pytest.raises(SettingsError, match="fix or delete"):
        load_settings(tmp_path, {})


@pytest.mark.parametrize("value", ["two words", "zero\u200bwidth", "line\nbreak"])
def test_bad_tokens_are_refused_without_echoing_them(tmp_path, value):
    (tmp_path / "settings.json").write_text(json.dumps({"civitai_token": value}))
    with pytest.raises(SettingsError, match="copy it again") as e:
        load_settings(tmp_path, {})
    assert value.strip() not in str(e.value)


def test_settings_edge_cases(tmp_path):
    (tmp_path / "settings.json").write_text(json.dumps({"civitai_token": " civ_SECRET_123\n"}))
    assert load_settings(tmp_path, {}).civitai_token == "civ_SECRET_123"  # pasted with a line break
    (tmp_path / "settings.json").write_bytes(b"\xef\xbb\xbf" + json.dumps({"allow_loopback": True}).encode())
    assert load_settings(tmp_path, {}).allow_loopback is True  # a UTF-8 BOM (Windows Notepad) is fine
    (tmp_path / "settings.json").write_text(json.dumps({"stall_timeout_s": 0}))
    with pytest.raises(SettingsError, match="more than 0 seconds"):
        load_settings(tmp_path, {})


def test_retry_after_garbage_falls_back_to_backoff():
    from lora_ops.fetching.http_client import Client
    from lora_ops.fetching.settings import FetchSettings

    c = Client(FetchSettings(backoff_s=1.0))
    assert 0.5 <= c.backoff_s(0, "garbage") <= 1.5
    assert c.backoff_s(0, "1e9") == 120.0 and c.backoff_s(0, "nan") <= 1.5


@pytest.mark.parametrize("text,remote", [("style/a.safetensors", False), ("", False), ("hf://o/r/x.safetensors", True),
                                         ("sha256:abc", True), ("civitai:1@2", True), ("https://x.org/a", True)])
def test_is_remote_follows_the_parser(text, remote):
    from lora_ops.fetching.source_ref import is_remote

    assert is_remote(text) is remote  # a malformed remote form counts as remote, so fetching explains it
