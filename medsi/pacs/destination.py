"""Where DICOM objects go: a remote node written ``AET@HOST:PORT``.

The application entity title follows the AE value representation (PS3.5 section 6.2): at
most 16 characters of printable ASCII, no backslash, not only spaces; spaces at either end
are not significant and are dropped.
"""

from __future__ import annotations

import dataclasses
import re

from medsi.errors import ConfigError

__all__ = ["Destination", "parse_destination", "check_ae_title"]

_AE_MAX = 16
_HOST = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?)$")


def check_ae_title(value: str, name: str = "ae_title") -> str:
    """An AE title as DICOM allows it, stripped of its insignificant spaces.

    Parameters
    ----------
    value
        The title, e.g. ``"MEDSI"``.
    name
        The argument's name, for the message.

    Returns
    -------
    str

    Raises
    ------
    ConfigError
        If the title is empty, longer than 16 characters, or holds a backslash or a
        character outside printable ASCII.

    Examples
    --------
    >>> check_ae_title(" ORTHANC ")
    'ORTHANC'
    """
    if not isinstance(value, str):
        raise TypeError(f'"{name}" must be a str, got {type(value).__name__}.')
    title = value.strip(" ")
    if not title:
        raise ConfigError(
            f'"{name}" must be an AE title of 1 to 16 characters, got {value!r}; pass the '
            'title the remote node is configured with, e.g. "ORTHANC".'
        )
    if len(title) > _AE_MAX:
        raise ConfigError(
            f'"{name}" must be at most 16 characters (DICOM AE), got {title!r} '
            f"({len(title)}); use the shorter title the node is configured with."
        )
    bad = sorted({c for c in title if c == "\\" or not (" " <= c <= "~")})
    if bad:
        raise ConfigError(
            f'"{name}" may hold printable ASCII except a backslash, got {title!r} with '
            f"{', '.join(repr(c) for c in bad)}; use letters, digits, '-' or '_'."
        )
    return title


@dataclasses.dataclass(frozen=True)
class Destination:
    """A remote DICOM node: its AE title and network address.

    Attributes
    ----------
    ae_title
        Called AE title.
    host
        Host name or IP address (an IPv6 address without brackets).
    port
        TCP port, 1-65535.
    """

    ae_title: str
    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.ae_title}@{host}:{self.port}"


def parse_destination(text: str) -> Destination:
    """Read a destination written ``AET@HOST:PORT``.

    Parameters
    ----------
    text
        E.g. ``"ORTHANC@127.0.0.1:4242"`` or ``"PACS@[::1]:104"``.

    Returns
    -------
    Destination

    Raises
    ------
    ConfigError
        If a part is missing, the AE title is not valid DICOM, the host is not a host name
        or IP address, or the port is not an integer in 1-65535.

    Examples
    --------
    >>> parse_destination("ORTHANC@127.0.0.1:4242")
    Destination(ae_title='ORTHANC', host='127.0.0.1', port=4242)
    """
    if not isinstance(text, str):
        raise TypeError(f'"destination" must be a str, got {type(text).__name__}.')
    usage = 'write it AET@HOST:PORT, e.g. "ORTHANC@127.0.0.1:4242"'
    ae_title, at, address = text.strip().rpartition("@")
    host, colon, port_text = address.rpartition(":")
    if not at or not colon or not host or not port_text:
        raise ConfigError(
            f'"destination" must have an AE title, a host and a port, got {text!r}; {usage}.'
        )
    ae_title = check_ae_title(ae_title, "destination AE title")
    if not _HOST.match(host):
        raise ConfigError(
            f'"destination" host must be a host name or IP address, got {host!r} in '
            f"{text!r}; {usage} (an IPv6 address in brackets)."
        )
    try:
        port = int(port_text)
    except ValueError:
        port = 0
    if not (port_text.isdigit() and 1 <= port <= 65535):
        raise ConfigError(
            f'"destination" port must be an integer in 1-65535, got {port_text!r} in '
            f"{text!r}; {usage}."
        )
    return Destination(ae_title, host.strip("[]"), port)
