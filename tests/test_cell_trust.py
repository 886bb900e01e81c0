"""A password goes only to a server whose certificate the cell file names (pin or trust_dir)."""

from __future__ import annotations

from pathlib import Path

import pytest

from cellctl.cell import check_cell_file, load_cell, tags
from drivers.config import OpcuaConfig
from tests.located import col_of

DEVICE = """\
cell: t
devices:
  ua:
    driver: opcua
    endpoint: opc.tcp://127.0.0.1:4840/ua
    security: Basic256Sha256_SignAndEncrypt
    cert: client.der
    key: client.pem
    user: operator
    password_env: CELLCTL_TEST_TRUST_PASSWORD
"""


def test_a_user_without_server_cert_or_trust_dir_is_refused_where_the_user_is(
    tmp_path: Path,
) -> None:
    path = tmp_path / "cell.yaml"
    path.write_text(DEVICE)
    problems = check_cell_file(path)
    assert [p.code for p in problems] == ["untrusted-server"]
    assert str(problems[0]) == (
        f"{path}:9:{col_of(DEVICE, 9, 'operator')}: device ua: user 'operator' needs the "
        "server's certificate: pin it with server_cert or name a trust_dir that holds it, or "
        "any server answering at opc.tcp://127.0.0.1:4840/ua would receive the password"
    )


@pytest.mark.parametrize(
    ("line", "field", "expected"),
    [
        ("    server_cert: certs/robot.der\n", "server_cert", "certs/robot.der"),
        ("    trust_dir: trusted\n", "trust_dir", "trusted"),
    ],
)
def test_server_cert_or_trust_dir_is_enough_and_reaches_the_driver_beside_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, line: str, field: str, expected: str
) -> None:
    path = tmp_path / "cell.yaml"
    path.write_text(DEVICE + line)
    assert check_cell_file(path) == []
    monkeypatch.setenv("CELLCTL_TEST_TRUST_PASSWORD", "s3cret")
    config = tags.device_config(load_cell(path), "ua")
    assert isinstance(config, OpcuaConfig)
    assert getattr(config.security, field) == str(tmp_path / expected)


@pytest.mark.parametrize("field", ["server_cert", "trust_dir"])
def test_a_trust_setting_without_a_secured_channel_is_refused(tmp_path: Path, field: str) -> None:
    # No secure channel, no certificate asked for: the setting would check nothing.
    text = (
        "cell: t\ndevices:\n  ua:\n    driver: opcua\n"
        "    endpoint: opc.tcp://127.0.0.1:4840/ua\n"
        f"    {field}: trusted\n"
    )
    path = tmp_path / "cell.yaml"
    path.write_text(text)
    problems = check_cell_file(path)
    assert [p.code for p in problems] == ["insecure-trust"]
    assert problems[0].line == 6 and field in problems[0].message
    assert "security" in problems[0].message
