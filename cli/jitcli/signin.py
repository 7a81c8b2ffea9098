"""Sign in once: browser and device-code sign-in remembered between runs, the way azure-identity does it.

Two things make a sign-in last: azure-identity's persistent token cache (`TokenCachePersistenceOptions`, named
`jit-broker` so nothing else shares it) holds the refresh token, and the `AuthenticationRecord` of the first
sign-in (which account, tenant and client: no secret) tells the next run's credential which cached account to
use silently. The record lives next to the config file, readable by its owner only.

Where the cache may live is the `token_cache` setting:

- `keyring` (default): only in the platform's encrypted store (DPAPI on Windows, the Keychain on macOS,
  libsecret on Linux). Where there is none (a Linux server, an SSH session without a keyring) the sign-in
  stays in memory as before, and `jit` says so once.
- `keyring-or-file`: the same, but where no keyring works, an unencrypted file only you can read (0600, under
  `~/.IdentityService/`; azure-identity's `allow_unencrypted_storage`).
- `memory`: never written anywhere; every run signs in again.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from jitcli.errors import ConfigError

if TYPE_CHECKING:
    from azure.core.credentials import AccessToken
    from azure.identity import AuthenticationRecord, TokenCachePersistenceOptions

    from jitcli.config import Settings

#: The name of jit's own token cache (kept apart from the Azure CLI's and other tools').
CACHE_NAME = "jit-broker"
TOKEN_CACHE_MODES = ("keyring", "keyring-or-file", "memory")
#: The sign-in record, next to the config file.
RECORD_FILE = "signin-record.json"
#: Present once `jit` has said that sign-in is not remembered on this machine.
NOTICE_FILE = "signin-memory-notice"
NOTICE = (
    "note: sign-in is kept in memory only, so jit asks again next run: no usable keyring (libsecret) here. "
    "`jit config set token_cache keyring-or-file` remembers it in a file only you can read (unencrypted). "
    "This note is shown once."
)


class InteractiveCredential(Protocol):
    """What jit uses of azure-identity's InteractiveBrowserCredential and DeviceCodeCredential."""

    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        """A token, silently from the cache when it can, else by asking the user."""
        ...

    def authenticate(self, *, scopes: list[str], **kwargs: Any) -> AuthenticationRecord:
        """Ask the user to sign in and return the record of who did."""
        ...


class SignInStore:
    """Where a browser / device-code sign-in is remembered: the cache options and the record's file."""

    def __init__(
        self,
        folder: Path,
        mode: str,
        *,
        keyring_usable: Callable[[], bool] | None = None,
        say: Callable[[str], None] | None = None,
    ) -> None:
        if mode not in TOKEN_CACHE_MODES:
            raise ConfigError(f"token_cache must be one of {', '.join(TOKEN_CACHE_MODES)}, not {mode!r}")
        self.folder = folder
        self.mode = mode
        self._keyring_usable = keyring_usable or keyring_usable_here
        self._say = say or (lambda text: print(text, file=sys.stderr, flush=True))

    @classmethod
    def for_settings(cls, settings: Settings) -> SignInStore:
        """The store the settings ask for, in the config file's folder."""
        return cls(settings.path.parent, settings.get("token_cache") or "keyring")

    @property
    def record_path(self) -> Path:
        return self.folder / RECORD_FILE

    def cache_options(self) -> TokenCachePersistenceOptions | None:
        """azure-identity's persistence options for this mode and machine; None keeps the cache in memory
        (and, the first time that happens on this machine, says so)."""
        from azure.identity import TokenCachePersistenceOptions

        if self.mode == "memory" or not _persistence_supported():
            return None
        if self.mode == "keyring-or-file":
            return TokenCachePersistenceOptions(name=CACHE_NAME, allow_unencrypted_storage=True)
        if self._keyring_usable():
            return TokenCachePersistenceOptions(name=CACHE_NAME, allow_unencrypted_storage=False)
        self._notice_once()
        return None

    def load_record(self, client_id: str, tenant_id: str | None) -> AuthenticationRecord | None:
        """The record of an earlier sign-in with this client and tenant setting; None when there is none, it
        does not parse, or it was made for another client or tenant."""
        from azure.identity import AuthenticationRecord

        try:
            saved = json.loads(self.record_path.read_text(encoding="utf-8"))
            if saved.get("client_id") != client_id or saved.get("tenant_setting") != tenant_id:
                return None
            record = AuthenticationRecord.deserialize(saved["record"])
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return None
        return record if record.client_id == client_id else None

    def save_record(self, record: AuthenticationRecord, tenant_id: str | None) -> None:
        """Write the record for the next run: owner-only, replaced atomically."""
        body = {"client_id": record.client_id, "tenant_setting": tenant_id, "record": record.serialize()}
        _write_private(self.record_path, json.dumps(body, indent=2) + "\n")

    def tighten_cache_file(self) -> None:
        """Keep an unencrypted cache owner-only even when its file was created by something else first."""
        if self.mode != "keyring-or-file" or sys.platform == "win32":
            return
        for suffix in (".nocae", ".cae"):
            cache = Path.home() / ".IdentityService" / (CACHE_NAME + suffix)
            try:
                if cache.stat().st_mode & 0o077:
                    cache.chmod(0o600)
            except OSError:
                pass

    def _notice_once(self) -> None:
        marker = self.folder / NOTICE_FILE
        if marker.exists():
            return
        self._say(NOTICE)
        with contextlib.suppress(OSError):  # a read-only config folder: the note may show again, harmlessly
            _write_private(marker, "shown\n")


class RememberedSignIn:
    """A browser or device-code credential whose sign-in outlives the process (see the module docstring).

    Built lazily on the first token request, so the default chain pays nothing when the Azure CLI answers
    first; usable inside azure-identity's ChainedTokenCredential.
    """

    def __init__(
        self,
        make: Callable[..., InteractiveCredential],
        store: SignInStore,
        *,
        client_id: str,
        tenant_id: str | None,
    ) -> None:
        self._make = make
        self._store = store
        self._client_id = client_id
        self._tenant_id = tenant_id
        self._lock = threading.Lock()
        self._credential: InteractiveCredential | None = None
        self._persistent = False
        self._record: AuthenticationRecord | None = None

    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        """A token: from the remembered sign-in when there is one, else after signing in (remembering it)."""
        with self._lock:
            credential = self._built()
            if self._persistent and self._record is None:
                self._record = credential.authenticate(scopes=list(scopes), **kwargs)
                self._store.save_record(self._record, self._tenant_id)
                self._store.tighten_cache_file()
        return credential.get_token(*scopes, **kwargs)

    def _built(self) -> InteractiveCredential:
        if self._credential is None:
            options = self._store.cache_options()
            self._persistent = options is not None
            extra: dict[str, Any] = {}
            if options is not None:
                extra["cache_persistence_options"] = options
                self._record = self._store.load_record(self._client_id, self._tenant_id)
                if self._record is not None:
                    extra["authentication_record"] = self._record
            self._credential = self._make(**extra)
        return self._credential


def keyring_usable_here() -> bool:
    """Whether azure-identity can encrypt its cache on this machine: always on Windows and macOS; on Linux
    when libsecret works (PyGObject installed, a Secret Service answering), tried as msal-extensions does."""
    if sys.platform == "win32" or sys.platform == "darwin":
        return True
    if not sys.platform.startswith("linux"):
        return False
    try:
        from msal_extensions.libsecret import trial_run  # type: ignore[import-untyped]

        trial_run()
    except Exception:  # ImportError without PyGObject, GLib errors or RuntimeError without a keyring
        return False
    return True


def _persistence_supported() -> bool:
    """azure-identity persists caches on Windows, macOS and Linux only."""
    return sys.platform in ("win32", "darwin") or sys.platform.startswith("linux")


def _write_private(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
    if sys.platform != "win32":
        tmp.chmod(0o600)  # in case the file was there before with a wider mode
    tmp.replace(path)
