"""What of the running config and of the log may leave the gateway: everything but secrets.

One rule for both (docs/diagnosis.md, actions `config`, `logs`, `support-bundle`):

- **By key name.** A key is secret when one of its words (split at `_`, `-`, `.`, blanks and
  camelCase, compared lower-case) is `password`, `passwd`, `passphrase`, `pwd`, `secret`,
  `token`, `credential`, `private`, `apikey`, `authorization` or `cookie` (each also plural), or
  two words in a row read `api key`, `secret key` or `key material`. Its value, whatever it is
  (a string, a number, a whole mapping), becomes `"<redacted>"`; a value that is None (nothing
  set) stays None. So `uplink.password`, every SL651 station's `password`,
  `password_credential` and `key_credential` (the names of systemd credentials: harmless, but
  the rule stays simple), any `*_token`, `private_key`, `client_secret`.
- **By value.** In every string, wherever its key: a PEM private key block (`-----BEGIN …
  PRIVATE KEY-----` to its END line, or to the end of the text when cut) becomes `<redacted>`;
  `Bearer <token>` (and `Basic …`) becomes `Bearer <redacted>`; the password of a URL
  (`scheme://user:pw@host`) becomes `<redacted>`; and a secret-looking name written with its
  value in free text (`password=…`, `"token": "…"`, `api_key: …`) keeps the name and loses
  the value (`Authorization: Bearer x` ends as `Authorization: <redacted> <redacted>`).

Paths stay: `uplink.tls.key` names a file whose content is never read here, and a public key
(`diagnosis.engineers[].public_key`) is not a secret. A plain `key` is not secret by name (it is
a path in the config and a dictionary key in many log events); its value is still checked.
"""

from __future__ import annotations

import itertools
import re
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from agent.config import Config

REDACTED = "<redacted>"

_SECRET_WORDS = frozenset({
    "password", "passwd", "passphrase", "pwd", "secret", "token", "credential", "private",
    "apikey", "authorization", "cookie",
})  # fmt: skip
_SECRET_PAIRS = frozenset({("api", "key"), ("secret", "key"), ("key", "material")})
_WORD_SPLIT = re.compile(r"[^A-Za-z0-9]+|(?<=[a-z0-9])(?=[A-Z])")

_PEM_PRIVATE = re.compile(
    r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----.*?(?:-----END [A-Z0-9 ]*PRIVATE KEY-----|\Z)",
    re.DOTALL,
)
_BEARER = re.compile(r"\b(Bearer|Basic)\s+[A-Za-z0-9._~+/=-]+", re.IGNORECASE)
_URL_PASSWORD = re.compile(r"\b([a-z][a-z0-9+.-]*://[^\s/:@]*):[^\s/@]*@", re.IGNORECASE)
_NAMED_VALUE = re.compile(
    r"\b((?:[a-z0-9]+[_-])*"
    r"(?:password|passwd|passphrase|secret|token|api[_-]?key|credential|authorization)s?"
    r"['\"]?\s*[:=]\s*['\"]?)([^\s'\",;}&)\]]+)",
    re.IGNORECASE,
)


def secret_key(name: str) -> bool:
    """Whether a key of this name holds a secret (the rule in the module docstring)."""
    words = [w.lower() for w in _WORD_SPLIT.split(name) if w]
    singular = [w[:-1] if w.endswith("s") and w[:-1] in _SECRET_WORDS else w for w in words]
    if any(w in _SECRET_WORDS for w in singular):
        return True
    return any(pair in _SECRET_PAIRS for pair in itertools.pairwise(singular))


def redact_text(text: str) -> str:
    """`text` with private keys, bearer tokens, URL passwords and `name=secret` values out."""
    if "-----BEGIN" in text:
        text = _PEM_PRIVATE.sub(REDACTED, text)
    text = _BEARER.sub(rf"\1 {REDACTED}", text)
    if "://" in text:
        text = _URL_PASSWORD.sub(rf"\1:{REDACTED}@", text)
    return _NAMED_VALUE.sub(rf"\1{REDACTED}", text)


def redact_value(value: Any) -> Any:
    """A copy of JSON-like data (dicts, lists, scalars) with every secret replaced."""
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, dict):
        return {
            key: (REDACTED if item is not None else None)
            if secret_key(str(key))
            else redact_value(item)
            for key, item in value.items()
        }
    if isinstance(value, list | tuple):
        return [redact_value(item) for item in value]
    return value


def redact_config(config: Config) -> dict[str, Any]:
    """The running config as plain JSON-able data, every secret replaced by "<redacted>"."""
    data: dict[str, Any] = redact_value(config.model_dump(mode="json"))
    return data


def redact_event(event: dict[str, Any]) -> dict[str, Any]:
    """A log event (a plain dict) with its secrets replaced, by key and by value."""
    redacted: dict[str, Any] = redact_value(event)
    return redacted
