"""Fetching as the real Civitai and Hugging Face behave (``../shared/research/real-services.md``):
the file Civitai's own server would serve for every source form, refusals from the metadata
before any byte, the services' error bodies and codes turned into messages that say what
happened and the fix, and a connection pool that an error answer cannot poison."""

from __future__ import annotations

import copy
import hashlib
import json
import os
import urllib.parse
from pathlib import Path

import pytest

from helpers.fake_hub import CIVITAI_ERRORS, CFile, Hub, safetensors_bytes
from lora_ops.fetching.fetch import Fetcher
from lora_ops.fetching.http_client import Client, FetchError, token_for
from lora_ops.fetching.remote import _choose_file
from lora_ops.fetching.service_errors import explain
from lora_ops.fetching.settings import FetchSettings

TOKEN = "planted-civitai-token-77a1"
RECORDED = Path(__file__).resolve().parents[1] / "fixtures" / "civitai" / "version_1255556.json"


def settings_for(hub: Hub, **kw) -> FetchSettings:
    base = dict(civitai_endpoint=hub.api_base, hf_endpoint=hub.hf_base, allow_loopback=True, retries=2,
                backoff_s=0.01, stall_timeout_s=2, connect_timeout_s=2, civitai_token=TOKEN)
    base.update(kw)
    return FetchSettings(**base)


def fetch(hub, tmp_path, source, **kw):
    settings = settings_for(hub, **kw.pop("settings", {}))
    folder = tmp_path / "models"
    folder.mkdir(exist_ok=True)
    return Fetcher(settings, None, str(tmp_path / "locks")).fetch(source, [str(folder)], "loras", **kw)


def sub(tmp_path, name: str):
    (tmp_path / name).mkdir()
    return tmp_path / name


def gguf(seed: int) -> bytes:
    return b"GGUF" + bytes([3, 0, 0, 0]) + bytes((seed * 7 + i) % 251 for i in range(40_000))


@pytest.fixture
def hub():
    h = Hub(token=TOKEN, hf_token="hf-good")
    h.add_blob("st", "flux_style.safetensors", safetensors_bytes(1, 20_000))
    h.add_blob("st32", "flux_style_fp32.safetensors", safetensors_bytes(2, 30_000))
    h.add_blob("pkl", "flux_style.ckpt", b"PK\x03\x04" + b"\x01" * 5000)
    h.add_blob("train", "training_data.zip", b"PK\x03\x04" + b"\x02" * 7000)
    h.add_blob("diff", "flux_style_diffusers.zip", b"PK\x03\x04" + b"\x03" * 6000)
    h.add_blob("q8", "flux_style.gguf", gguf(8))
    h.add_blob("q4", "flux_style.gguf", gguf(4))
    h.add_blob("vae", "vae.safetensors", safetensors_bytes(3, 5000))
    h.add_blob("only", "only_sha.safetensors", safetensors_bytes(4, 4000))
    # A multi-file version shaped like real ones: the primary first, the others in upload order,
    # metadata with nulls, a null metadata, two GGUF quants under one name, only some hash kinds.
    h.add_civitai(900, 9001, files=[
        CFile("st", format="SafeTensor", size="pruned", fp="fp16", primary=True),
        CFile("st32", format="SafeTensor", size="full", fp="fp32", hash_kinds=("SHA256", "AutoV2")),
        CFile("pkl", format="PickleTensor", size="full", fp="fp32"),
        CFile("train", type="Training Data", format="Other"),
        CFile("diff", type="Archive", format="Diffusers", size="full", fp="fp16"),
        CFile("q8", format="GGUF", size="pruned", quant="Q8_0"),
        CFile("q4", format="GGUF", size="pruned", quant="Q4_K_M"),
        CFile("vae", type="VAE", format="SafeTensor", metadata_null=True),
    ])
    h.add_civitai(901, 9011, files=[CFile("only", primary=True, hash_kinds=("SHA256",))])
    with h:
        yield h


# -- 1. download-URL filters are preferences, as on Civitai's server ----------------------------

def test_recorded_file_with_null_size_and_fp_matches_a_full_preference_query():
    recorded = json.loads(RECORDED.read_text())["files"]
    files = copy.deepcopy(recorded)
    query = {"type": "Model", "format": "SafeTensor", "size": "pruned", "fp": "fp16"}
    assert _choose_file(files, None, query, None)["id"] == 1160774
    gguf_files = [{"id": 1, "type": "Model", "metadata": {"format": "GGUF", "size": None, "fp": None}, "hashes": {},
                   "downloadUrl": "https://civitai.com/api/download/models/5?type=Model&format=GGUF&size=pruned"
                                  "&quantType=Q4_K_M"},
                  {"id": 2, "type": "Model", "metadata": {"format": "GGUF", "size": None, "fp": None}, "hashes": {},
                   "downloadUrl": "https://civitai.com/api/download/models/5?type=Model&format=GGUF&size=pruned"
                                  "&quantType=Q8_0"}]
    q8 = {"type": "Model", "format": "GGUF", "size": "pruned", "quantType": "Q8_0"}
    assert _choose_file(gguf_files, None, q8, None)["id"] == 2


def test_recorded_version_json_is_fetched(hub, tmp_path):
    """The recorded real answer, served as it is but for its URLs and the hashes and size of the
    bytes served here."""
    recorded = json.loads(RECORDED.read_text())
    hub.add_blob("rec", "pp-enchanted-whimsy.safetensors", safetensors_bytes(9, 3000))
    v = hub.add_civitai(1117241, 1255556, files=[CFile("rec", primary=True, id=1160774)])
    served = hub.version_json(v)
    recorded["files"][0]["hashes"] = {**served["files"][0]["hashes"],
                                      "BLAKE3": recorded["files"][0]["hashes"]["BLAKE3"]}
    recorded["files"][0]["sizeKB"] = served["files"][0]["sizeKB"]
    recorded["files"][0]["downloadUrl"] = recorded["downloadUrl"] = served["downloadUrl"]
    hub.version_json = lambda _v: recorded  # the recorded shape, verbatim otherwise
    r = fetch(hub, tmp_path, f"{hub.api_base}/api/download/models/1255556?type=Model&format=SafeTensor"
                             "&size=pruned&fp=fp16")
    assert r.name == "pp-enchanted-whimsy.safetensors" and r.sha256 == hub.blobs["rec"].sha256()


def _query(url: str) -> dict:
    return {k: v[0] for k, v in urllib.parse.parse_qs(urllib.parse.urlsplit(url).query).items()}


SAFE_FORMS = ["", "?type=Model&format=SafeTensor", "?type=Model&format=SafeTensor&size=pruned&fp=fp16",
              "?type=Model&format=SafeTensor&size=full&fp=fp32", "?format=SafeTensor&fp=fp32", "?size=full",
              "?type=VAE", "?type=VAE&format=SafeTensor&size=pruned",
              "?type=Model&format=GGUF&size=pruned&quantType=Q8_0",
              "?type=Model&format=GGUF&size=pruned&quantType=Q4_K_M", "?type=Model&format=GGUF",
              "?type=Pruned%20Model", "?fileId=90011", "?fileId=90016", "?type=Model&fileId=90017"]


@pytest.mark.parametrize("form", SAFE_FORMS)
def test_each_download_url_form_gets_the_file_civitais_server_serves(hub, tmp_path, form):
    source = f"{hub.api_base}/api/download/models/9001{form}"
    served = hub.serve_choice(9001, _query(source))
    if served is None:  # Civitai answers 404 File not found: so do we, from the metadata
        with pytest.raises(FetchError, match=r"none of its files fits|has no file") as e:
            fetch(hub, tmp_path, source)
        assert "has no a" not in str(e.value) and hub.count("storage", "/obj/") == 0
        return
    r = fetch(hub, tmp_path, source)
    assert r.sha256 == hub.blobs[served.blob].sha256(), (form, served)
    if "format=SafeTensor&size=full" in form:  # the report says why each other file was not taken
        assert "flux_style.gguf (Model, GGUF, pruned, Q8_0): format GGUF, not SafeTensor" in " ".join(r.notes)


def test_every_listed_download_url_gets_its_own_file(hub, tmp_path):
    v = hub.versions[9001]
    for f in v.files:
        url = hub.download_url(v, f)
        assert hub.serve_choice(9001, _query(url)) is f  # the fake hub agrees with itself
        if f.blob in ("pkl", "train", "diff"):
            continue  # refused from the metadata (tested below)
        r = fetch(hub, sub(tmp_path, f.blob), url)
        assert r.sha256 == hub.blobs[f.blob].sha256(), f


def test_page_url_air_and_file_id_forms(hub, tmp_path):
    r = fetch(hub, tmp_path, f"{hub.api_base}/models/900/flux-style?modelVersionId=9001")
    assert r.sha256 == hub.blobs["st"].sha256()
    taken = next(n for n in r.notes if "took" in n)
    assert "has 8 files; took flux_style.safetensors (Model, SafeTensor, pruned, fp16): the version's primary" in taken
    assert "training_data.zip (Training Data, Other): not the primary file" in taken
    for n, (source, blob) in enumerate([("urn:air:flux1:lora:civitai:900@9001", "st"),
                                        ("urn:air:flux1:lora:civitai:900@9001+90011", "st32"),
                                        ("air:flux1:lora:civitai:900@9001+90017", "vae"),
                                        ("civitai:900@9001", "st")]):
        r = fetch(hub, sub(tmp_path, str(n)), source)
        assert r.sha256 == hub.blobs[blob].sha256(), source


@pytest.mark.parametrize("kind", ["sha256", "autov2", "autov3", "crc32"])
def test_every_hash_kind_finds_its_file_in_a_multi_file_version(hub, tmp_path, kind):
    listed = hub.civitai_hashes(hub.blobs["vae"])
    value = listed[{"sha256": "SHA256", "autov2": "AutoV2", "autov3": "AutoV3", "crc32": "CRC32"}[kind]]
    r = fetch(hub, tmp_path, f"{kind}:{value}")
    assert r.sha256 == hub.blobs["vae"].sha256() and r.name == "vae.safetensors"


def test_autov1_of_a_big_file(hub, tmp_path):
    hub.add_blob("big", "big.safetensors", safetensors_bytes(5, 600_000))  # > 2 MiB: AutoV1 is defined
    hub.add_civitai(902, 9021, files=[CFile("st", primary=True), CFile("big", size="full")])
    r = fetch(hub, tmp_path, "autov1:" + hub.civitai_hashes(hub.blobs["big"])["AutoV1"])
    assert r.sha256 == hub.blobs["big"].sha256()


def test_a_version_listing_only_sha256(hub, tmp_path):
    r = fetch(hub, tmp_path, "civitai:901@9011")
    assert r.sha256 == hub.blobs["only"].sha256()
    with pytest.raises(FetchError, match="Civitai does not know"):
        fetch(hub, sub(tmp_path, "x"), "autov2:" + hub.blobs["only"].sha256()[:10])


# -- 5. refused from the metadata, before any byte ------------------------------------------------

@pytest.mark.parametrize("source,words", [
    ("?type=Model&format=PickleTensor", r"pickle \(PickleTensor\).*allow_pickle.*flux_style\.safetensors"),
    ("?type=Training%20Data", r"training data.*not a model"),
    ("?type=Archive&format=Diffusers", r"Diffusers.*zip.*not a file ComfyUI loads"),
    ("?fileId=90013", r"training data"),
])
def test_files_the_metadata_rules_out_are_never_downloaded(hub, tmp_path, source, words):
    with pytest.raises(FetchError, match=words) as e:
        fetch(hub, tmp_path, f"{hub.api_base}/api/download/models/9001{source}")
    assert "Nothing was downloaded" in str(e.value)
    assert hub.count("storage", "/obj/") == 0 and hub.count("api", "/api/download/") == 0
    assert os.listdir(tmp_path / "models") == []


def test_allow_pickle_admits_pickles_never_archives(hub, tmp_path):
    r = fetch(hub, tmp_path, f"{hub.api_base}/api/download/models/9001?type=Model&format=PickleTensor",
              settings={"allow_pickle": True})
    assert r.sha256 == hub.blobs["pkl"].sha256() and r.name == "flux_style.ckpt"
    for source in ("?type=Training%20Data", "?type=Archive&format=Diffusers"):
        with pytest.raises(FetchError, match="allow_pickle does not change this"):
            fetch(hub, tmp_path, f"{hub.api_base}/api/download/models/9001{source}",
                  settings={"allow_pickle": True})
    assert hub.count("storage", "/obj/train") == 0 and hub.count("storage", "/obj/diff") == 0
    assert sorted(os.listdir(tmp_path / "models")) == ["flux_style.ckpt"]


# -- 3. archived ----------------------------------------------------------------------------------

def test_archived_version_says_archived(hub, tmp_path):
    hub.add_civitai(903, 9031, ["vae"], archived=True)
    for source in ("civitai:903@9031", f"{hub.api_base}/api/download/models/9031",
                   f"{hub.api_base}/api/download/models/9031?type=Model&format=SafeTensor"):
        with pytest.raises(FetchError, match="archived") as e:
            fetch(hub, tmp_path, source)
        assert "has no a" not in str(e.value) and "its SHA-256" in str(e.value)
    assert hub.count("storage", "/obj/") == 0


# -- 4. each Civitai error body has its own message -----------------------------------------------

@pytest.mark.parametrize("key,words,not_words", [
    ("file_not_found", r"File not found.*no file", "token"),
    ("model_not_found", r"Model not found.*id", "token"),
    ("missing_file", r"Missing model file", "token"),
    ("archived", r"archived", "token"),
    ("no_access", r"do not have access.*model page", "CIVITAI_API_TOKEN"),
    ("login", r"requires you to be logged in.*token sent was refused", None),
    ("disabled", r"creator has disabled downloads.*No token", "token was refused"),
    ("rate_limit", r"unusual amount of downloading.*wait", "connection failed"),
])
def test_each_civitai_error_body_gets_its_own_message(hub, tmp_path, key, words, not_words):
    hub.versions[9001].error = key
    if key == "rate_limit":
        hub.versions[9001].error = None
        hub.civitai_limit = 100
    with pytest.raises(FetchError, match=words) as e:
        fetch(hub, tmp_path, "civitai:900@9001")
    if not_words:
        assert not_words not in str(e.value)
    assert CIVITAI_ERRORS[key][1].get("message", CIVITAI_ERRORS[key][1]["error"])[:40] in str(e.value)


def test_login_required_without_a_token_says_to_set_one(hub, tmp_path):
    hub.versions[9001].require_token = True
    with pytest.raises(FetchError, match=r"logged in.*CIVITAI_API_TOKEN") as e:
        fetch(hub, tmp_path, "civitai:900@9001", settings={"civitai_token": None})
    assert "refused" not in str(e.value)


def test_disabled_downloads_with_a_valid_token_is_not_a_token_problem(hub, tmp_path):
    hub.versions[9001].disabled = True
    with pytest.raises(FetchError, match="disabled downloads") as e:
        fetch(hub, tmp_path, "civitai:900@9001")
    assert "CIVITAI_API_TOKEN" not in str(e.value) and "refused" not in str(e.value)


@pytest.mark.parametrize("deadline,words", [("2027-01-05T00:00:00.000Z", "Early Access until 2027-01-05"),
                                            ("permanent", "paid Early Access")])
def test_early_access_with_and_without_deadline(hub, tmp_path, deadline, words):
    hub.versions[9001].early_access = deadline
    with pytest.raises(FetchError, match=words):
        fetch(hub, tmp_path, "civitai:900@9001")


def test_a_type_civitai_does_not_know_is_named_before_any_request(hub, tmp_path):
    with pytest.raises(FetchError, match=r"type=Checkpoint is not a file type Civitai knows.*Model, Pruned Model"):
        fetch(hub, tmp_path, f"{hub.api_base}/api/download/models/9001?type=Checkpoint")
    assert hub.count("api", "/api/download/") == 0


def test_civitais_400_body_is_explained(hub):
    settings = settings_for(hub)
    answer = Client(settings).request("GET", f"{hub.api_base}/api/download/models/9001?format=Zip")
    e = explain(answer, "download of civitai 9001", settings)
    assert e.status == 400 and "Invalid enum value for format" in str(e) and "copy the URL again" in str(e)


# -- model id only: the first version the user can download ---------------------------------------

def test_model_id_takes_the_first_downloadable_version_and_says_which(hub, tmp_path):
    hub.versions.clear()
    hub.add_civitai(950, 9503, ["q8"], early_access="2027-02-01T00:00:00.000Z", name="v3 beta")
    hub.add_civitai(950, 9502, ["vae"], archived=True, name="v2")
    hub.add_civitai(950, 9501, ["st"], name="v1")
    for source in ("civitai:950", f"{hub.api_base}/models/950/some-slug"):
        r = fetch(hub, tmp_path, source)
        assert r.sha256 == hub.blobs["st"].sha256() and r.provenance["civitai"]["version_id"] == 9501
        notes = " ".join(r.notes)
        assert "version v1 (9501)" in notes and "v3 beta (9503): Early Access until 2027-02-01" in notes
        assert "v2 (9502): archived" in notes
    assert hub.count("api", "/api/download/models/9503") == 0


def test_model_with_no_downloadable_version_names_each(hub, tmp_path):
    hub.versions.clear()
    hub.add_civitai(951, 9512, ["q8"], early_access="2027-02-01T00:00:00.000Z")
    hub.add_civitai(951, 9511, ["vae"], archived=True)
    with pytest.raises(FetchError, match=r"no version.*9512.*Early Access until 2027-02-01.*9511.*archived"):
        fetch(hub, tmp_path, "civitai:951")


def test_api_civitai_com_download_urls_get_the_civitai_token():
    s = FetchSettings(civitai_token="c-tok", hf_token="h-tok")
    assert token_for("https://api.civitai.com/api/download/models/1?type=Model", s) == "c-tok"
    assert token_for("https://civitai.com/api/download/models/1", s) == "c-tok"
    assert token_for("https://cdn.civitai.com/x", s) is None  # a storage/CDN host never gets it


# -- 2. an error answer never poisons the connection pool -----------------------------------------

def test_six_requests_to_a_rate_limited_endpoint_all_get_civitais_message(hub):
    client = Client(settings_for(hub, retries=0))
    for _ in range(6):
        with pytest.raises(FetchError, match="unusual amount of downloading") as e:
            client.request("GET", f"{hub.api_base}/limited", headers={"Accept": "application/json"})
        assert "ProtocolError" not in str(e.value)


def test_an_api_404_does_not_spoil_the_next_call(hub, tmp_path):
    f = Fetcher(settings_for(hub, retries=0), None, str(tmp_path / "locks"))
    (tmp_path / "m").mkdir()
    for _ in range(3):
        with pytest.raises(FetchError, match="Civitai does not know"):
            f.fetch("sha256:" + "ab" * 32, [str(tmp_path / "m")], "loras")
        assert f.fetch("civitai:901@9011", [str(tmp_path / "m")], "loras").sha256 == hub.blobs["only"].sha256()


# -- Hugging Face: X-Error-Code and X-Error-Message ------------------------------------------------

@pytest.mark.parametrize("source,token,words,not_words", [
    ("hf://org/typo/x.safetensors", None, r"does not exist or is private.*spelling.*HF_TOKEN", "gated"),
    ("hf://org/typo/x.safetensors", "hf-good", r"RepoNotFound|does not exist", "gated"),
    ("hf://org/repo/missing.safetensors", None, r"no file missing\.safetensors.*revision main", "gated"),
    ("hf://org/repo@nosuchbranch/x.safetensors", None, r"no revision 'nosuchbranch'.*branch, tag or commit",
     "no file"),
    ("hf://org/gated/x.safetensors", None, r"gated.*accept its terms.*HF_TOKEN", None),
    ("hf://org/gated/x.safetensors", "hf-good", r"gated.*not accepted.*account", None),
])
def test_hugging_face_error_codes(hub, tmp_path, source, token, words, not_words):
    hub.add_hf("org/repo", "x.safetensors", "st")
    hub.add_hf("org/gated", "x.safetensors", "st", gated=True)
    hub.hf_accepted = False
    with pytest.raises(FetchError, match=words) as e:
        fetch(hub, tmp_path, source, settings={"hf_token": token})
    if not_words:
        assert not_words not in str(e.value).split("server says")[0]


def test_hugging_face_bad_token_on_a_missing_repo_says_both(hub, tmp_path):
    with pytest.raises(FetchError, match=r"HF_TOKEN was refused.*does not exist or is private"):
        fetch(hub, tmp_path, "hf://org/typo/x.safetensors", settings={"hf_token": "stale"})


def test_hugging_face_lfs_302_with_body_and_non_lfs_relative_307(hub, tmp_path):
    hub.add_hf("org/repo", "lfs.safetensors", "st")
    hub.add_hf("org/repo", "small.safetensors", "vae", lfs=False)
    client = Client(settings_for(hub))
    for _ in range(3):  # the 302's body must not spoil the pooled connection
        r = fetch(hub, tmp_path, "hf://org/repo/lfs.safetensors")
        assert r.sha256 == hub.blobs["st"].sha256() and hub.hf_commit in r.provenance["url"]
    r = fetch(hub, tmp_path, "hf://org/repo/small.safetensors")
    assert r.sha256 == hub.blobs["vae"].sha256()
    assert any("no SHA-256" in n for n in r.notes)  # a git blob ETag is not taken for one
    assert hub.count("hf", "/api/resolve-cache/") >= 1
    del client


def test_by_hash_lookup_404_is_not_retried(hub, tmp_path):
    with pytest.raises(FetchError):
        fetch(hub, tmp_path, "sha256:" + hashlib.sha256(b"nothing").hexdigest())
    assert hub.count("api", "/by-hash/") == 1


def _zip(entries: dict[str, bytes]) -> bytes:
    import io
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data in entries.items():
            z.writestr(name, data)
    return buf.getvalue()


def test_a_zip_from_a_plain_url_is_an_archive_never_a_pickle(hub, tmp_path):
    """Without metadata (a plain URL), the bytes decide: a zip without data.pkl is an archive,
    refused even with allow_pickle; a PyTorch zip checkpoint is a pickle, admitted only with it."""
    hub.add_blob("z1", "dataset.zip", _zip({"img/001.png": b"\x89PNG" + b"\x00" * 100, "img/001.txt": b"a cat"}))
    hub.add_blob("z2", "looks_like.ckpt", _zip({"img/001.png": b"\x89PNG" + b"\x00" * 100}))
    hub.add_blob("z3", "real.ckpt", _zip({"archive/data.pkl": b"\x80\x02}q\x00.", "archive/data/0": b"\x00" * 64}))
    for name in ("dataset.zip", "looks_like.ckpt"):
        with pytest.raises(FetchError, match=r"zip archive.*not a model file.*allow_pickle does not change this"):
            fetch(hub, tmp_path, f"{hub.api_base}/files/{name}", settings={"allow_pickle": True})
    with pytest.raises(FetchError, match=r"pickle"):
        fetch(hub, tmp_path, f"{hub.api_base}/files/real.ckpt")
    r = fetch(hub, tmp_path, f"{hub.api_base}/files/real.ckpt", settings={"allow_pickle": True})
    assert r.name == "real.ckpt" and os.listdir(tmp_path / "models") == ["real.ckpt"]
