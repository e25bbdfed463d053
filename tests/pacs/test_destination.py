import pytest

from medsi.errors import ConfigError
from medsi.pacs import Destination, check_ae_title, parse_destination


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("ORTHANC@127.0.0.1:4242", Destination("ORTHANC", "127.0.0.1", 4242)),
        ("PACS@pacs.example.org:104", Destination("PACS", "pacs.example.org", 104)),
        ("PACS@[::1]:11112", Destination("PACS", "::1", 11112)),
        (" MY AE @localhost:1", Destination("MY AE", "localhost", 1)),
        ("A@B@host:5", Destination("A@B", "host", 5)),
    ],
    ids=["ipv4", "hostname", "ipv6", "spaces", "at-in-title"],
)
def test_destinations_are_parsed(text, expected):
    assert parse_destination(text) == expected
    assert parse_destination(str(expected)) == expected


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("127.0.0.1:4242", "must have an AE title, a host and a port"),
        ("ORTHANC@127.0.0.1", "must have an AE title, a host and a port"),
        ("@127.0.0.1:4242", "AE title of 1 to 16 characters"),
        ("ORTHANC@127.0.0.1:http", "port must be an integer in 1-65535"),
        ("ORTHANC@127.0.0.1:0", "port must be an integer in 1-65535"),
        ("ORTHANC@127.0.0.1:70000", "port must be an integer in 1-65535"),
        ("ORTHANC@bad host:104", "host must be a host name or IP address"),
        ("ORTHANC@../x:104", "host must be a host name or IP address"),
        ("A_TITLE_LONGER_THAN_16@h:104", "at most 16 characters"),
        ("BACK\\SLASH@h:104", "printable ASCII except a backslash"),
    ],
    ids=["no-title", "no-port", "empty-title", "port-word", "port-0", "port-big",
         "host-space", "host-path", "title-long", "title-backslash"],
)  # fmt: skip
def test_bad_destinations_say_what_to_write(text, match):
    with pytest.raises(ConfigError, match=match):
        parse_destination(text)


def test_ae_title_type_is_checked():
    with pytest.raises(TypeError, match="must be a str"):
        check_ae_title(104)


def test_examples_run():
    import doctest

    import medsi.pacs.destination

    failures, tried = doctest.testmod(medsi.pacs.destination)
    assert tried >= 2 and failures == 0
