"""Keep secrets out of URLs and error messages: the one place that decides what is secret.

Three kinds of secret reach messages in this project:

* credentials written into a URL: the user-info part (``s3://KEY:SECRET@host/...``,
  ``https://TOKEN@host/...``) and query-string or fragment parameters whose names look like
  secrets (``?token=...``, ``X-Amz-Signature=...``, ``X-Amz-Credential=...``, SAS ``sig=...``);
* storage-option values under secret-looking keys (``key``, ``secret``, ``token``,
  ``password``, ``credentials``, ``session_token`` ...), as fsspec receives them;
* values whose origin makes them secret although they look like anything else, such as the
  value of an environment variable a trusted catalog templated into a URL path. Their values
  are passed in as ``secrets``.

Everything secret becomes :data:`REDACTED` (``***``). What an output records about its source
(a store's identity record, a run's ``config.yaml``) goes through :func:`redact_record`, which
keeps a slow, salted digest of the original beside a redacted record, so that two sources
differing only in a secret are not taken for one. The rules err on the side of redacting
too much (any key containing ``key`` or ``auth`` ...): a message loses a harmless value at
worst, never leaks a credential.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import quote, quote_plus

__all__ = [
    "REDACTED",
    "is_secret_key",
    "redact_options",
    "redact_record",
    "redact_text",
    "redact_url",
    "redacted_error",
]

REDACTED = "***"

_SECRET_WORDS = re.compile(
    r"key|secret|token|passw|pwd|credential|session|signature|auth|cookie|private"
)
#: short names that are secrets only as a whole word (Azure SAS ``sig``, ``X-Goog-Sig``)
_SECRET_PARTS = {"sig", "pass"}
#: a secret shorter than this is not searched for in free text (it would match everywhere)
MIN_SECRET_LENGTH = 4

# every pattern starts only where a run of its characters starts and never backtracks into a
# run (the lookarounds), so that redacting is linear in the text's length: the text may be
# anything a hostile catalog wrote into an error message
_SCHEME = r"(?<![A-Za-z0-9+.\-])[A-Za-z][A-Za-z0-9+.\-]*://"
_URL = re.compile(_SCHEME + r"[^\s'\"<>`]+")
_USERINFO = re.compile(rf"(?P<scheme>{_SCHEME})[^/?#@\s]+@")
_PARAM = re.compile(r"(?P<sep>[?&;#])(?P<key>[^=&;#\s]+)=(?P<value>[^&;#\s]*)")
#: ``'key': 'value'`` and ``key="value"`` (reprs of option dicts) and bare ``key=value``
_PAIR = re.compile(
    r"(?P<q>['\"]?)(?<![\w\-])(?P<key>[A-Za-z_][\w\-]*)(?![\w\-])(?P=q)"
    r"(?:(?P<sep>\s*[:=]\s*)(?P<vq>['\"])(?P<value>.*?)(?P=vq)|=(?P<bare>[^\s'\",;&)}\]]+))"
)


def is_secret_key(key: object) -> bool:
    """Whether a storage-option or query-parameter name looks like it holds a secret."""
    name = str(key).lower()
    if _SECRET_WORDS.search(name):
        return True
    return bool(_SECRET_PARTS & set(re.split(r"[^a-z0-9]+", name)))


def redact_url(url: str) -> str:
    """``url`` with user info and secret-looking query/fragment parameters replaced by ``***``.

    Works on fsspec URL chains (``simplecache::s3://...``) and on text that is not a valid URL
    (nothing is parsed strictly, so a malformed URL cannot make redaction fail).
    """
    text = _USERINFO.sub(lambda m: f"{m['scheme']}{REDACTED}@", str(url))

    def param(m: re.Match) -> str:
        if is_secret_key(m["key"]):
            return f"{m['sep']}{m['key']}={REDACTED}"
        return m[0]

    return _PARAM.sub(param, text)


def redact_options(options: Any) -> Any:
    """A copy of (nested) storage options with the values of secret-looking keys redacted."""
    if isinstance(options, Mapping):
        return {
            k: REDACTED if is_secret_key(k) and v not in (None, "") else redact_options(v)
            for k, v in options.items()
        }
    if isinstance(options, (list, tuple)):
        return type(options)(redact_options(v) for v in options)
    if isinstance(options, str) and "://" in options:
        return redact_url(options)
    return options


def _variants(secret: str) -> set[str]:
    # a secret may reach a message percent-encoded (aiohttp/yarl quote URL paths)
    return {secret, quote(secret, safe=""), quote(secret), quote_plus(secret)}


def redact_text(text: str, secrets: Iterable[str | None] = ()) -> str:
    """``text`` (an error message) with URL credentials, secret pairs and ``secrets`` redacted.

    Parameters
    ----------
    text
        Free text that may contain URLs and reprs of option dicts.
    secrets
        Values to remove wherever they appear (None and values shorter than
        :data:`MIN_SECRET_LENGTH` characters are ignored).
    """
    out = str(text)
    found = sorted(
        {v for s in secrets if s and len(s) >= MIN_SECRET_LENGTH for v in _variants(s)},
        key=len,
        reverse=True,  # longest first: an encoded form may contain the plain one
    )
    for secret in found:
        out = out.replace(secret, REDACTED)
    out = _URL.sub(lambda m: redact_url(m[0]), out)

    def pair(m: re.Match) -> str:
        value = m["bare"] if m["value"] is None else m["value"]
        if not is_secret_key(m["key"]) or value == REDACTED:
            return m[0]
        if m["value"] is None:
            return f"{m['q']}{m['key']}{m['q']}={REDACTED}"
        return f"{m['q']}{m['key']}{m['q']}{m['sep']}{m['vq']}{REDACTED}{m['vq']}"

    return _PAIR.sub(pair, out)


def redacted_error(
    err: BaseException,
    secrets: Iterable[str | None] = (),
    *,
    fallback: type[BaseException] = RuntimeError,
) -> BaseException | None:
    """A copy of ``err`` whose message is :func:`redact_text` of its own; None if unchanged.

    The copy has ``err``'s type when that type takes a single message (else ``fallback``) and
    its traceback. Raise it ``from None``: a chained original would print the secret again.
    """
    text = str(err)
    clean = redact_text(text, secrets)
    if clean == text:
        return None
    try:
        new = type(err)(clean)
    except Exception:  # noqa: BLE001 - an exception class with another signature
        new = fallback(clean)
    if str(new) != clean:  # e.g. KeyError quotes its message
        new = fallback(clean)
    return new.with_traceback(err.__traceback__)


#: PBKDF2 rounds of :func:`redact_record`'s digest: guessing a secret from it costs as much
_ROUNDS = 100_000


def redact_record(record: Any) -> Any:
    """``record`` (a source: URL, or a JSON-able mapping of parameters) fit to keep in outputs.

    Secrets are redacted as by :func:`redact_url` and :func:`redact_options`; if anything was,
    a digest of the original (PBKDF2-SHA256, fixed salt, so equal sources record equal
    digests) is appended to a string (``" [pbkdf2:HEX]"``) or added to a mapping
    (``redacted_digest``). A record without secrets comes back unchanged.
    """
    clean = redact_url(record) if isinstance(record, str) else redact_options(record)
    if clean == record:
        return record
    text = json.dumps(record, sort_keys=True, default=str).encode()
    digest = hashlib.pbkdf2_hmac("sha256", text, b"corrdiff_xr.redact_record", _ROUNDS).hex()
    if isinstance(record, str):
        return f"{clean} [pbkdf2:{digest[:32]}]"
    if isinstance(clean, Mapping):
        return {**clean, "redacted_digest": f"pbkdf2:{digest[:32]}"}
    return clean
