"""SSH's errors, translated once: asyncssh and socket failures become :mod:`runners.errors` types, each with its fix.

:func:`translate_errors` is the one place that knows asyncssh's exception classes; the
pool (``ssh_pool.py``) and the transport (``ssh.py``) wrap every call in it, so the agent
reads a sentence that says what to do (add the host key, fix identity_file, check the
VPN) instead of a library's traceback.
"""

from __future__ import annotations

import contextlib
import shlex
import socket
from collections.abc import Iterator
from pathlib import Path

import asyncssh

from runners.config import HostConfig
from runners.errors import AuthError, CommandFailed, ConfigError, HostError, HostKeyError, HostUnreachable

__all__ = ["address_of", "keyscan_hint", "known_hosts_path", "translate_errors"]


def known_hosts_path(host: HostConfig) -> Path:
    """The known_hosts file that verifies this host (its own, or the user's)."""
    return Path(host.known_hosts or "~/.ssh/known_hosts").expanduser()


def address_of(host: HostConfig) -> str:
    """``address:port``, as the messages name the host."""
    return f"{host.address}:{host.port}"


def keyscan_hint(host: HostConfig) -> str:
    """How to add the host's key to known_hosts (the fix a :class:`HostKeyError` names)."""
    kh = host.known_hosts or "~/.ssh/known_hosts"
    port = f"-p {host.port} " if host.port != 22 else ""
    addr = shlex.quote(host.address or "")
    login = f"{host.user}@{addr}" if host.user else addr
    return (
        f"`ssh-keyscan {port}{addr} >> {kh}` (then compare the fingerprint with the host's admin), "
        f"or log in once with `ssh {port}{login}` and accept the key"
    )


def _has_pinned_key(host: HostConfig) -> bool:
    """True when known_hosts already holds a key for this host: a mismatch is then a *changed* key."""
    try:
        kh = asyncssh.read_known_hosts(str(known_hosts_path(host)))
        port = host.port if host.port != 22 else None
        trusted = kh.match(host.address or "", "", port)[0]
        return bool(trusted)
    except (OSError, ValueError, asyncssh.Error):
        return False


@contextlib.contextmanager
def translate_errors(host: HostConfig, what: str) -> Iterator[None]:
    """The one place where asyncssh/socket errors become :mod:`runners.errors` types, each with a fix."""
    where = address_of(host)
    try:
        yield
    except (HostError, ConfigError):
        raise
    except asyncssh.HostKeyNotVerifiable as e:
        if _has_pinned_key(host):
            raise HostKeyError(
                f"The SSH host key of {host.name} ({where}) does not match the one in "
                f"{known_hosts_path(host)}: it changed, or someone is in between. Refused.",
                f"If the host was reinstalled, confirm the new fingerprint with its admin, remove the old "
                f"entry with `ssh-keygen -R '[{host.address}]:{host.port}' -f {known_hosts_path(host)}`, "
                f"then add the new one: {keyscan_hint(host)}.",
            ) from e
        raise HostKeyError(
            f"The SSH host key of {host.name} ({where}) is not in {known_hosts_path(host)}; "
            "host keys are always verified.",
            f"Add it: {keyscan_hint(host)}.",
        ) from e
    except asyncssh.PermissionDenied as e:
        ident = host.identity_file or "the SSH agent / default keys"
        raise AuthError(
            f"{host.user or 'the user'}@{where} refused our key ({ident}).",
            "Check that identity_file is right and that its public key is in the host's "
            "~/.ssh/authorized_keys (ssh-copy-id), and that 'user' is right.",
        ) from e
    except asyncssh.KeyImportError as e:
        raise AuthError(
            f"Cannot load the SSH key for {host.name}: {e}.",
            "identity_file must be an unencrypted OpenSSH private key; or leave it unset to use the SSH agent.",
        ) from e
    except ConnectionRefusedError as e:
        raise HostUnreachable(
            f"{host.name} ({where}) refused the connection: nothing listens on port {host.port}.",
            "Check address and port in the config and that sshd runs on the host.",
        ) from e
    except socket.gaierror as e:
        raise HostUnreachable(
            f"Cannot resolve {host.address!r} for host {host.name}: {e.strerror}.",
            "Check 'address' (a typo?) and this machine's DNS / VPN.",
        ) from e
    except asyncssh.ProcessError as e:  # asyncssh.TimeoutError of a command; before TimeoutError (a subclass)
        raise CommandFailed(f"{what} on {host.name} did not finish in time.", "The host may be overloaded.") from e
    except TimeoutError as e:  # asyncio.TimeoutError is TimeoutError; also asyncssh's connect_timeout
        raise HostUnreachable(
            f"{host.name} ({where}) did not answer within {host.connect_timeout_s:g} s ({what}).",
            "Check that the host is up and reachable from here (VPN, firewall, proxy_jump).",
        ) from e
    except (
        asyncssh.ChannelOpenError,
        asyncssh.DisconnectError,
        asyncssh.ConnectionLost,
        asyncssh.SFTPConnectionLost,
        asyncssh.SFTPNoConnection,
        BrokenPipeError,
        ConnectionError,
    ) as e:
        raise HostUnreachable(
            f"The SSH connection to {host.name} ({where}) dropped during {what}: {e}.",
            "Retry: the next call reconnects. Jobs already started keep running on the host.",
        ) from e
    except asyncssh.SFTPError as e:
        raise HostError(f"{what} on {host.name} failed: {e.reason}.", "Check the path and its permissions.") from e
    except OSError as e:
        if isinstance(e, FileNotFoundError) and e.filename:
            raise ConfigError(
                f"Host {host.name}: {e.filename} does not exist.",
                "Fix identity_file / known_hosts in the config.",
            ) from e
        raise HostUnreachable(
            f"Cannot reach {host.name} ({where}): {e.strerror or e}.",
            "Check the network path to the host (VPN, firewall, proxy_jump).",
        ) from e
