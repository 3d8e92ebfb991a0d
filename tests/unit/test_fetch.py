"""Fetching against a real HTTP server on loopback (tests/helpers/fake_hub.py) that plays
Civitai, Hugging Face, an object store and a plain host: for every behaviour, one verified file
or a clear error and nothing under the final name."""

from __future__ import annotations

import hashlib
import logging
import os

import pytest

from helpers.fake_hub import Hub, safetensors_bytes
from lora_ops.fetching.fetch import Fetcher
from lora_ops.fetching.http_client import FetchError
from lora_ops.fetching.netguard import UnsafeError
from lora_ops.fetching.settings import FetchSettings
from lora_ops.fetching.source_ref import SourceError

TOKEN = "planted-civitai-token-5ec2e7"


@pytest.fixture
def hub():
    h = Hub(token=TOKEN, hf_token="hf-good-token")
    h.add_blob("a", "style_a.safetensors", safetensors_bytes(1, 300_000, {"ss_output_name": "a"}))
    h.add_blob("b", "style_b.safetensors", safetensors_bytes(2, 1000))
    h.add_blob("pkl", "evil.safetensors", b"\x80\x04\x95" + b"\x00" * 500)
    h.add_civitai(100, 1001, ["a"])
    h.add_civitai(200, 2001, ["b"], require_token=True)
    with h:
        yield h


def settings_for(hub: Hub, **kw) -> FetchSettings:
    base = dict(civitai_endpoint=hub.api_base, hf_endpoint=hub.hf_base, allow_loopback=True, retries=3,
                backoff_s=0.01, stall_timeout_s=0.5, connect_timeout_s=2, civitai_token=TOKEN)
    base.update(kw)
    return FetchSettings(**base)


def fetch(hub, tmp_path, source, progress=None, **kw):
    settings = settings_for(hub, **kw.pop("settings", {}))
    folder = tmp_path / "loras"
    folder.mkdir(exist_ok=True)
    f = Fetcher(settings, None, str(tmp_path / "locks"), progress)
    return f.fetch(source, [str(folder)], "loras", **kw)


def listing(tmp_path) -> list[str]:
    return sorted(os.listdir(tmp_path / "loras"))


def test_civitai_version_downloads_verified_with_provenance(hub, tmp_path):
    r = fetch(hub, tmp_path, "civitai:100@1001")
    data = hub.blobs["a"].data
    assert r.how == "download" and r.name == "style_a.safetensors"
    assert open(r.path, "rb").read() == data and r.sha256 == hashlib.sha256(data).hexdigest()
    assert listing(tmp_path) == ["style_a.safetensors"]  # no part or sidecar left
    entry = r.models_entry("loras")
    assert entry == {"name": "style_a.safetensors", "url": f"{hub.api_base}/api/download/models/1001",
                     "hash": r.sha256, "hash_type": "sha256", "directory": "loras"}
    assert r.provenance["air"] == "urn:air:sd1:lora:civitai:100@1001"
    assert r.provenance["trained_words"] == ["wbstyle"]


def test_token_goes_to_civitai_only_and_never_to_storage_or_logs(hub, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    r = fetch(hub, tmp_path, "urn:air:sd1:lora:civitai:200@2001")
    assert r.how == "download"
    api = [h for role, _m, p, h in hub.requests if role == "api" and "/api/download/" in p]
    storage = [h for role, _m, _p, h in hub.requests if role == "storage"]
    assert api and all(h.get("Authorization") == f"Bearer {TOKEN}" for h in api)
    assert storage and not any("Authorization" in h for h in storage)
    assert TOKEN not in caplog.text and TOKEN not in r.report() and TOKEN not in str(r.provenance)


def test_missing_token_is_a_clear_error_and_leaves_nothing(hub, tmp_path):
    with pytest.raises(FetchError, match="CIVITAI_API_TOKEN") as e:
        fetch(hub, tmp_path, "civitai:200@2001", settings={"civitai_token": None})
    assert e.value.status == 401 and "logged in" in str(e.value)
    assert listing(tmp_path) == []
    assert hub.count("api", "/api/download/models/2001") == 1  # no retry storm on 401


@pytest.mark.parametrize("status,pattern", [(404, "Model not found"), (410, "archived")])
def test_civitai_gone_answers(hub, tmp_path, status, pattern):
    hub.add_civitai(300, 3001, ["b"], status=status)
    with pytest.raises(FetchError, match=pattern):
        fetch(hub, tmp_path, "civitai:300@3001")
    assert listing(tmp_path) == [] and hub.count("api", "/api/download/models/3001") == 1


def test_early_access_names_the_deadline(hub, tmp_path):
    hub.add_civitai(400, 4001, ["b"], early_access="2026-12-24T00:00:00Z")
    with pytest.raises(FetchError, match="Early Access until 2026-12-24"):
        fetch(hub, tmp_path, "https://civitai.com/models/400?modelVersionId=4001".replace(
            "https://civitai.com", hub.api_base))


def test_model_id_only_takes_the_first_version_on_the_page_and_url_forms_parse(hub, tmp_path):
    hub.add_civitai(100, 1002, ["b"])  # listed after 1001: the page's order, not the newest id, decides
    r = fetch(hub, tmp_path, f"{hub.api_base}/models/100/some-slug")
    assert r.name == "style_a.safetensors" and r.provenance["civitai"]["version_id"] == 1001
    r2 = fetch(hub, tmp_path, f"{hub.api_base}/api/download/models/1002?type=Model&format=SafeTensor")
    assert r2.name == "style_b.safetensors"


def test_by_hash_from_civitai(hub, tmp_path):
    data = hub.blobs["b"].data
    r = fetch(hub, tmp_path, "autov2:" + hashlib.sha256(data).hexdigest()[:10].upper())
    assert r.sha256 == hashlib.sha256(data).hexdigest() and r.name == "style_b.safetensors"


def test_hugging_face_pins_commit_and_uses_linked_etag(hub, tmp_path):
    hub.add_hf("org/repo", "sub/lora.safetensors", "a")
    r = fetch(hub, tmp_path, "hf://org/repo/sub/lora.safetensors", settings={"hf_token": "hf-good-token"})
    assert r.name == "lora.safetensors" and r.sha256 == hub.blobs["a"].sha256()
    assert r.provenance["hf"]["commit"] == hub.hf_commit and hub.hf_commit in r.provenance["url"]
    storage = [h for role, _m, _p, h in hub.requests if role == "storage"]
    assert storage and not any("Authorization" in h for h in storage)


def test_invalid_hf_token_falls_back_to_anonymous_with_a_warning(hub, tmp_path):
    hub.add_hf("org/public", "x.safetensors", "b")
    r = fetch(hub, tmp_path, f"{hub.hf_base}/org/public/blob/main/x.safetensors", settings={"hf_token": "bogus"})
    assert r.sha256 == hub.blobs["b"].sha256()
    assert any("HF_TOKEN was refused" in n for n in r.notes)


def test_gated_hf_repo_says_accept_terms(hub, tmp_path):
    hub.add_hf("org/gated", "x.safetensors", "b", gated=True)
    with pytest.raises(FetchError, match="accept its terms"):
        fetch(hub, tmp_path, "hf://org/gated/x.safetensors")


def test_dropped_connection_resumes_with_range(hub, tmp_path):
    hub.fault("a", drop_after=400_000)
    r = fetch(hub, tmp_path, "civitai:100@1001")
    assert open(r.path, "rb").read() == hub.blobs["a"].data
    ranges = [h.get("Range") for role, _m, _p, h in hub.requests if role == "storage"]
    assert "bytes=400000-" in ranges


def test_retries_exhausted_keep_the_part_and_next_run_resumes(hub, tmp_path):
    hub.fault("a", drop_after=500_000, drop_always=True)
    with pytest.raises(FetchError, match="run again to resume"):
        fetch(hub, tmp_path, "civitai:100@1001", settings={"retries": 1})
    names = listing(tmp_path)
    assert "style_a.safetensors" not in names and any(n.endswith(".part") for n in names)
    part = next(n for n in names if n.endswith(".part"))
    assert os.path.getsize(tmp_path / "loras" / part) == 500_000
    hub.faults.clear()
    hub.requests.clear()
    r = fetch(hub, tmp_path, "civitai:100@1001")
    assert open(r.path, "rb").read() == hub.blobs["a"].data and r.downloaded.resumed_from == 500_000
    assert [h.get("Range") for role, _m, _p, h in hub.requests if role == "storage"] == ["bytes=500000-"]
    assert listing(tmp_path) == ["style_a.safetensors"]


def test_stalled_transfer_reconnects(hub, tmp_path):
    hub.fault("a", stall_after=300_000, stall_s=3)
    r = fetch(hub, tmp_path, "civitai:100@1001")
    assert r.sha256 == hub.blobs["a"].sha256()


def test_wrong_bytes_are_quarantined_not_published(hub, tmp_path):
    hub.fault("a", corrupt=True)
    with pytest.raises(FetchError, match="expected") as e:
        fetch(hub, tmp_path, "civitai:100@1001")
    assert hub.blobs["a"].sha256() in str(e.value)
    assert listing(tmp_path) == ["style_a.safetensors.sha256-mismatch.part"]


def test_server_ignoring_range_restarts_cleanly(hub, tmp_path):
    hub.fault("a", drop_after=400_000, ignore_range=True)
    r = fetch(hub, tmp_path, "civitai:100@1001")
    assert open(r.path, "rb").read() == hub.blobs["a"].data


@pytest.mark.parametrize("status", [429, 503])
def test_rate_limit_and_5xx_are_retried_honouring_retry_after(hub, tmp_path, status):
    hub.fault("a", status=status, status_times=2, retry_after=0)
    r = fetch(hub, tmp_path, "civitai:100@1001")
    assert r.sha256 == hub.blobs["a"].sha256()


def test_expired_signed_url_is_re_resolved(hub, tmp_path):
    hub.fault("a", expire_after=350_000)
    r = fetch(hub, tmp_path, "civitai:100@1001")
    assert open(r.path, "rb").read() == hub.blobs["a"].data
    assert hub.count("api", "/api/download/models/1001") == 2  # the second one gave a fresh signature


def test_content_disposition_filename_star_and_traversal(hub, tmp_path):
    hub.add_blob("c", "../../evil dir/naïve.safetensors", safetensors_bytes(3))
    r = fetch(hub, tmp_path, f"{hub.api_base}/files/../../evil dir/naïve.safetensors?cd=1".replace("../", "%2E%2E/"))
    assert r.name == "naïve.safetensors" and os.path.dirname(r.path) == str((tmp_path / "loras").resolve())


def test_user_filename_cannot_escape(hub, tmp_path):
    with pytest.raises(UnsafeError, match=r"'\.\./\.\./custom_nodes/evil/__init__\.py' leaves the model folder"):
        fetch(hub, tmp_path, "civitai:100@1001", filename="../../custom_nodes/evil/__init__.py")
    assert listing(tmp_path) == []


@pytest.mark.parametrize("url", ["http://169.254.169.254/latest/meta-data/", "https://10.0.0.1/x.safetensors",
                                 "https://[::ffff:192.168.1.1]/x.safetensors", "http://127.0.0.1:9/x"])
def test_internal_addresses_are_refused(hub, tmp_path, url):
    with pytest.raises((UnsafeError, FetchError)):
        fetch(hub, tmp_path, url, settings={"allow_loopback": False, "allowed_hosts": ("169.254.169.254",
                                                                                       "10.0.0.1", "127.0.0.1")})
    assert listing(tmp_path) == []


def test_unlisted_host_is_refused_with_the_fix(hub, tmp_path):
    with pytest.raises(FetchError, match="allowed_hosts"):
        fetch(hub, tmp_path, "https://models.example.org/x.safetensors")


def test_redirect_to_private_address_is_refused(hub, tmp_path):
    with pytest.raises(UnsafeError, match="private"):
        fetch(hub, tmp_path, f"{hub.api_base}/redirect?to=http://10.1.2.3/x.safetensors")


def test_pickle_content_is_refused_by_content(hub, tmp_path):
    with pytest.raises(FetchError, match="pickle"):
        fetch(hub, tmp_path, f"{hub.api_base}/files/evil.safetensors")
    assert listing(tmp_path) == []
    hub.add_blob("pk2", "old.ckpt", b"PK\x03\x04" + b"\x00" * 300)
    with pytest.raises(FetchError, match="allow_pickle"):
        fetch(hub, tmp_path, f"{hub.api_base}/files/old.ckpt")
    # A pickle stream need not start with its protocol marker: under a pickle extension,
    # anything not recognisably another format is refused too.
    hub.add_blob("pk3", "bare.pt", b"\x8c\x05posix\x94\x8c\x06system\x94\x93" + b"\x00" * 50)
    with pytest.raises(FetchError, match="pickle extension"):
        fetch(hub, tmp_path, f"{hub.api_base}/files/bare.pt")
    assert listing(tmp_path) == []
    r = fetch(hub, tmp_path, f"{hub.api_base}/files/old.ckpt", settings={"allow_pickle": True})
    assert r.name == "old.ckpt"


def test_truncated_safetensors_without_known_hash_is_refused(hub, tmp_path):
    data = safetensors_bytes(4, 1000)
    hub.add_blob("t", "cut.safetensors", data[:-100])
    with pytest.raises(FetchError, match=r"cut.safetensors from .*shorter than its header says.*incomplete"):
        fetch(hub, tmp_path, f"{hub.api_base}/files/cut.safetensors")
    assert listing(tmp_path) == []


def test_cancel_from_progress_keeps_a_resumable_part(hub, tmp_path):
    class Stop(Exception):
        pass

    def progress(done, total):
        if done >= 2 * 2**20 // 2:
            raise Stop

    hub.add_blob("big", "big.safetensors", safetensors_bytes(5, 2_000_000))
    hub.add_civitai(500, 5001, ["big"])
    with pytest.raises(Stop):
        fetch(hub, tmp_path, "civitai:500@5001", progress=progress)
    part = [n for n in listing(tmp_path) if n.endswith(".part")]
    assert len(part) == 1 and os.path.getsize(tmp_path / "loras" / part[0]) >= 2**20
    r = fetch(hub, tmp_path, "civitai:500@5001")
    assert r.downloaded.resumed_from >= 2**20 and r.sha256 == hub.blobs["big"].sha256()


def test_existing_file_with_other_content_is_not_overwritten(hub, tmp_path):
    (tmp_path / "loras").mkdir()
    (tmp_path / "loras" / "style_a.safetensors").write_bytes(safetensors_bytes(9))
    with pytest.raises(FetchError, match="different content"):
        fetch(hub, tmp_path, "civitai:100@1001")
    assert (tmp_path / "loras" / "style_a.safetensors").read_bytes() == safetensors_bytes(9)


def indexed_fetcher(hub, tmp_path, **kw) -> Fetcher:
    from lora_ops.fetching.hash_index import HashIndex

    return Fetcher(settings_for(hub, **kw), HashIndex(tmp_path / "index.sqlite"), str(tmp_path / "locks"))


def test_local_files_are_found_by_hash_before_the_network(hub, tmp_path):
    folder = tmp_path / "loras"
    (folder / "deep").mkdir(parents=True)
    data = hub.blobs["a"].data
    (folder / "deep" / "renamed.safetensors").write_bytes(data)
    f = indexed_fetcher(hub, tmp_path)
    for source in ("sha256:" + hashlib.sha256(data).hexdigest(), "autov2:" + hashlib.sha256(data).hexdigest()[:10]):
        r = f.fetch(source, [str(folder)], "loras")
        assert r.how == "index" and r.name == "deep/renamed.safetensors"
    assert hub.requests == []
    # A URL whose host names the same SHA-256 uses the local copy after one metadata request.
    r = f.fetch("civitai:100@1001", [str(folder)], "loras")
    assert r.how == "index" and r.name == "deep/renamed.safetensors"
    assert hub.count("storage", "/obj/") == 0 and r.models_entry("loras")["url"].endswith("/models/1001")


def test_a_source_fetched_once_needs_no_network_again(hub, tmp_path):
    folder = tmp_path / "loras"
    f = indexed_fetcher(hub, tmp_path)
    first = f.fetch("civitai:100@1001", [str(folder)], "loras")
    hub.requests.clear()
    again = indexed_fetcher(hub, tmp_path).fetch("civitai:100@1001", [str(folder)], "loras")
    assert hub.requests == [] and again.how == "index" and again.path == first.path
    assert again.provenance["air"] == first.provenance["air"]


def test_expected_sha256_refuses_other_content(hub, tmp_path):
    with pytest.raises(FetchError, match="expected " + "0" * 64):
        fetch(hub, tmp_path, f"{hub.api_base}/files/style_b.safetensors", expected_sha256="0" * 64)
    assert not (tmp_path / "loras" / "style_b.safetensors").exists()


def test_url_with_a_token_is_refused_so_it_never_stays_in_a_workflow(hub, tmp_path):
    with pytest.raises(SourceError, match="carries credentials") as e:
        fetch(hub, tmp_path, f"{hub.api_base}/api/download/models/1001?token=x123&type=Model")
    assert "x123" not in str(e.value) and hub.requests == []


@pytest.mark.parametrize("fault", [{"always_416": True},
                                   {"range_offset": 5, "drop_after": 300_000, "drop_always": True}],
                         ids=["always-416", "wrong-range-start"])
def test_servers_that_never_give_the_asked_range_end_in_an_error(hub, tmp_path, fault):
    hub.fault("a", **fault)
    with pytest.raises(FetchError):
        fetch(hub, tmp_path, "civitai:100@1001", settings={"retries": 2})
    assert len([r for r in hub.requests if r[0] == "storage"]) <= 8 and "style_a.safetensors" not in listing(tmp_path)


def test_by_hash_never_takes_another_file_of_the_version(hub, tmp_path):
    wrong = "sha256:" + "ab" * 32
    hub.versions[1001].files[0].claimed["SHA256"] = "AB" * 32  # Civitai claims it...
    with pytest.raises(FetchError, match="expected abab"):  # ...but the bytes say otherwise
        fetch(hub, tmp_path, wrong)
    assert "style_a.safetensors" not in listing(tmp_path)


def test_a_planted_symlink_part_is_never_written_through(hub, tmp_path):
    import json
    import socket

    folder = tmp_path / "loras"
    folder.mkdir()
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    (folder / "evil.part").symlink_to(victim)
    data = hub.blobs["a"].data
    key = hashlib.sha256(data).hexdigest()
    (folder / "evil.part.json").write_text(json.dumps({"key": key, "pid": 999999, "host": socket.gethostname()}))
    r = fetch(hub, tmp_path, "civitai:100@1001")
    assert victim.read_text() == "precious"
    assert not os.path.islink(r.path) and open(r.path, "rb").read() == data


def test_no_resume_without_a_validator_or_hash(hub, tmp_path):
    hub.add_blob("nv", "nv.safetensors", safetensors_bytes(8, 200_000))
    hub.fault("nv", drop_after=300_000, drop_always=True, no_etag=True)
    with pytest.raises(FetchError):
        fetch(hub, tmp_path, f"{hub.api_base}/files/nv.safetensors", settings={"retries": 0})
    assert [n for n in listing(tmp_path) if n.startswith("nv.safetensors.")]  # named after the URL's file
    hub.faults.clear()
    hub.fault("nv", no_etag=True)
    hub.requests.clear()
    r = fetch(hub, tmp_path, f"{hub.api_base}/files/nv.safetensors")
    assert r.downloaded.resumed_from == 0 and [h.get("Range") for *_x, h in hub.requests] == [None]


def test_compressed_and_empty_answers_are_refused(hub, tmp_path):
    hub.fault("a", gzip=True)
    with pytest.raises(FetchError, match="compressed"):
        fetch(hub, tmp_path, "civitai:100@1001")
    hub.add_blob("empty", "empty.safetensors", b"")
    with pytest.raises(FetchError, match="empty file"):
        fetch(hub, tmp_path, f"{hub.api_base}/files/empty.safetensors")
    assert listing(tmp_path) == []


def test_more_bytes_than_the_host_lists_are_cut_off(hub, tmp_path):
    hub.add_hf("org/big", "x.safetensors", "a")
    # The HEAD announces 1000 bytes; the storage sends the whole file with no length, so only
    # the cap at the announced size stops it.
    hub.fault("a", listed_size=1000, no_length=True)
    with pytest.raises(FetchError, match="sent more than the 1000 bytes the host lists"):
        fetch(hub, tmp_path, "hf://org/big/x.safetensors")
    assert listing(tmp_path) == []


@pytest.mark.parametrize("url, why", [("https://10.0.0.1/x.safetensors", "a private network address"),
                                      ("http://169.254.169.254/latest/meta-data/", "a link-local address")])
def test_a_never_allowed_address_does_not_advise_allowed_hosts(hub, tmp_path, url, why):
    """Advice to add a private or metadata address to allowed_hosts would lead nowhere: such an
    address is refused whatever the settings, and the message says so."""
    with pytest.raises(FetchError, match=why) as e:
        fetch(hub, tmp_path, url)
    assert "cannot change that" in str(e.value) and "add " not in str(e.value)
    assert listing(tmp_path) == []
