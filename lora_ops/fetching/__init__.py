"""Fetching: get a model file named by a ``source`` (file name, URL, Civitai AIR, ``hf://``
path or content hash) into a model folder, verified and resumable, with no ComfyUI import.

A fetch (:meth:`fetch.Fetcher.fetch`, the one entry point) goes, in order:

1. ``source_ref`` parses the source into a reference, without the network;
2. a plain file name is looked up in the folder's paths, nothing else;
3. a hash, or a remote reference whose SHA-256 is known, is looked up in ``hash_index``;
4. otherwise ``remote`` resolves the reference into a download plan through the services'
   APIs (``civitai_files`` picks the Civitai version and file and refuses files from their
   metadata; ``service_errors`` turns the services' error answers into messages), a local
   file with the SHA-256 the host names is used if there is one, else ``download`` fetches the
   bytes and verifies them before publishing; the index records what came from where.

Modules:

* ``fetch``: the entry point (:class:`~.fetch.Fetcher`, :class:`~.fetch.FetchResult`).
* ``source_ref``: the source forms and their parser.
* ``netguard``: the safety rules: which URLs and addresses may be contacted, token-free URLs
  for logs, safe file names.
* ``settings``: tokens, allowed hosts, endpoints, retry policy (environment and
  ``settings.json``).
* ``http_client``: HTTP on urllib3, each redirect hop checked again, retries with backoff.
* ``remote``: Civitai and Hugging Face resolution into a download plan.
* ``civitai_files``: which Civitai version and file a source means, refusals from metadata.
* ``service_errors``: Civitai / Hugging Face error answers into messages with the fix.
* ``download``: part files, resume, verification (size, SHA-256, content), atomic publish.
* ``hash_index``: the local SQLite index of model files' hashes and of sources fetched before
  (the hashes themselves are :mod:`lora_ops.hashing`, shared with extraction and identify).

Nothing is re-exported here: callers import the module they need (``from
lora_ops.fetching.fetch import Fetcher``), so importing the package loads no HTTP code.
"""
