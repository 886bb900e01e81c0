"""`cellctl serve --check`: the whole configuration of a service checked (cell, recipes, users,
certificates against the endpoint's address, journal) without touching a device."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from cellctl.testing import cli

DEMO = Path(__file__).resolve().parent.parent / "recipes" / "demo"


@pytest.fixture
def cell(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The demo cell and its recipes in a folder of the test's; no users file or certificates
    of the user's own are found."""
    folder = tmp_path / "cell"
    shutil.copytree(DEMO, folder)
    monkeypatch.setenv("CELLCTL_USERS", str(tmp_path / "none.yaml"))
    monkeypatch.setenv("CELLCTL_CERTS", str(tmp_path / "no-certs"))
    return folder / "cell.yaml"


def test_demo_configuration_is_ok(
    capsys: pytest.CaptureFixture[str], cell: Path, tmp_path: Path
) -> None:
    result = cli(capsys, "serve", cell, "--check", "--journal", tmp_path / "j.sqlite")
    assert result.exit_code == 0, result.err
    assert "released changeover, press-calibration, press-fit" in result.out
    assert "no users file" in result.out
    assert "no security (loopback" in result.out
    assert "writable" in result.out and "configuration ok" in result.out


def test_a_recipe_that_does_not_validate_is_named_with_its_line(
    capsys: pytest.CaptureFixture[str], cell: Path, tmp_path: Path
) -> None:
    broken = cell.parent / "broken.yaml"
    broken.write_text("recipe: broken\nversion: 1\nsteps:\n  - {set: {no.such.tag: 1}}\n")
    result = cli(capsys, "serve", cell, "--check", "--journal", tmp_path / "j.sqlite")
    assert result.exit_code == 1
    assert "recipe broken" in result.out and "not released" in result.out
    assert f"{broken}:4" in result.out  # file and line, as validate prints it
    assert "press-fit" in result.out  # the others are still released


def test_a_bad_endpoint_is_bad_input(capsys: pytest.CaptureFixture[str], cell: Path) -> None:
    result = cli(capsys, "serve", cell, "--check", "--endpoint", "http://127.0.0.1:80")
    assert result.exit_code == 1
    assert "opc.tcp://HOST:PORT" in result.err


def test_a_non_loopback_endpoint_needs_certificates(
    capsys: pytest.CaptureFixture[str], cell: Path
) -> None:
    result = cli(capsys, "serve", cell, "--check", "--endpoint", "opc.tcp://192.0.2.1:4850")
    assert result.exit_code == 1
    assert "192.0.2.1" in result.err and "cellctl certs" in result.err


def test_a_missing_users_file_is_named(
    capsys: pytest.CaptureFixture[str], cell: Path, tmp_path: Path
) -> None:
    missing = tmp_path / "users.yaml"
    result = cli(capsys, "serve", cell, "--check", "--users", missing)
    assert result.exit_code == 1
    assert str(missing) in result.err


def test_an_unwritable_journal_is_exit_6(
    capsys: pytest.CaptureFixture[str], cell: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "a-file"
    folder.write_text("not a folder")
    result = cli(capsys, "serve", cell, "--check", "--journal", folder / "j.sqlite")
    assert result.exit_code == 6
    assert "j.sqlite" in result.err


def test_http_alone_is_the_default_web_address_on_plain_http(
    capsys: pytest.CaptureFixture[str], cell: Path, tmp_path: Path
) -> None:
    journal = tmp_path / "j.sqlite"
    alone = cli(capsys, "serve", "--http", cell, "--check", "--journal", journal)
    assert alone.exit_code == 0, alone.err
    assert "web view: http://127.0.0.1:8480; plain HTTP (loopback)" in alone.out
    last = cli(capsys, "serve", cell, "--check", "--journal", journal, "--http")
    assert "web view: http://127.0.0.1:8480" in last.out
    port = cli(capsys, "serve", cell, "--http", "9001", "--check", "--journal", journal)
    assert "web view: http://127.0.0.1:9001" in port.out
    bad = cli(capsys, "serve", cell, "--http", "[::1]:99999", "--check", "--journal", journal)
    assert bad.exit_code == 1 and "[ADDR:]PORT" in bad.err


def test_a_non_loopback_web_view_needs_the_services_certificate(
    capsys: pytest.CaptureFixture[str], cell: Path, tmp_path: Path
) -> None:
    journal = tmp_path / "j.sqlite"
    refused = cli(
        capsys, "serve", cell, "--http", "192.0.2.1:8443", "--check", "--journal", journal
    )
    assert refused.exit_code == 1
    assert "HTTPS only" in refused.err and "cellctl certs init" in refused.err
    certs = tmp_path / "certs"
    made = cli(capsys, "certs", "init", "--dir", certs, "--host", "192.0.2.1")
    assert made.exit_code == 0, made.err
    served = cli(
        capsys,
        "serve",
        cell,
        "--certs",
        certs,
        "--http",
        "192.0.2.1:8443",
        "--check",
        "--journal",
        journal,
    )
    assert served.exit_code == 0, served.err
    assert "web view: https://192.0.2.1:8443; HTTPS with" in served.out


def test_a_bad_http_address_is_named(capsys: pytest.CaptureFixture[str], cell: Path) -> None:
    result = cli(capsys, "serve", cell, "--check", "--http", "foo:bar")
    assert result.exit_code == 1
    assert "--http foo:bar: write [ADDR:]PORT" in result.err
