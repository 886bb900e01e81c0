"""The remote CLI's arguments and failures that need no service: bad input exits 1 naming the
argument before anything is sent, an unreachable service exits 2 within the timeout; and the
status block read from the service's variables."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from cellctl.cli.views.service import WIDTH, status_lines
from cellctl.service.api import Prompt
from cellctl.service.client_status import parse_prompt, status_from
from cellctl.testing import cli, free_port


@pytest.fixture(autouse=True)
def _no_remote_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI's environment variables unset: each test sets what it needs."""
    for variable in ("CELLCTL_SERVER", "CELLCTL_USER", "CELLCTL_PASSWORD", "CELLCTL_CERTS"):
        monkeypatch.delenv(variable, raising=False)


def closed_port_url() -> str:
    """An endpoint on 127.0.0.1 where nothing listens."""
    return f"opc.tcp://127.0.0.1:{free_port()}"


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["force", "conveyor.run"], "force 'conveyor.run': write TAG=VALUE"),
        (["force", "=1"], "force '=1': write TAG=VALUE"),
        (["load", "press-fit", "-p", "count"], "-p 'count': write NAME=VALUE"),
        (["cmd", "start", "--choice", "retry"], "--choice retry: only unhold takes a choice"),
    ],
)
def test_bad_arguments_exit_1_naming_them_before_connecting(
    capsys: pytest.CaptureFixture[str], args: list[str], named: str
) -> None:
    # The server is one nobody listens at: a connect would be exit 2, not 1.
    code, out, err = cli(capsys, *args, "--server", closed_port_url())
    assert (code, out) == (1, "")
    assert err.startswith(f"error: {named}"), err


def test_a_user_without_password_off_a_terminal_exits_1(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, _, err = cli(capsys, "status", "--user", "olga", "--server", closed_port_url())
    assert code == 1
    assert "--user olga: no terminal to ask for the password" in err
    assert "CELLCTL_PASSWORD" in err


def test_a_password_is_never_sent_in_clear_to_another_machine(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CELLCTL_PASSWORD", "s3cret")
    # 192.0.2.1 (TEST-NET-1) is nowhere: the refusal comes before any connection.
    code, _, err = cli(
        capsys, "cmd", "reset", "--user", "olga", "--server", "opc.tcp://192.0.2.1:4840"
    )
    assert code == 1
    assert "needs --certs DIR" in err and "clear text" in err


def test_certs_named_without_a_client_certificate_exit_1(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code, _, err = cli(capsys, "status", "--certs", str(tmp_path), "--server", closed_port_url())
    assert code == 1
    assert f"no client certificate {tmp_path / 'client-cert.der'}" in err
    assert "cellctl certs client NAME" in err


def test_an_unreachable_service_exits_2_within_the_timeout(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    url = closed_port_url()
    monkeypatch.setenv("CELLCTL_SERVER", url)  # the environment's server, when none is named
    started = time.monotonic()
    code, out, err = cli(capsys, "cmd", "reset")
    assert time.monotonic() - started < 5.0 + 1.0
    assert (code, out) == (2, "")
    assert err == f"error: {url}: connection refused: is `cellctl serve` running?\n"


@pytest.mark.parametrize(
    ("text", "prompt"),
    [
        ("", None),
        (
            "3.4: Insert the part (one of: ok, skip)",
            Prompt("3.4", "Insert the part", "one of: ok, skip"),
        ),
        ("3.4: Weight (kg)? (float 0..5)", Prompt("3.4", "Weight (kg)?", "float 0..5")),
        ("3.4: Go on ()", Prompt("3.4", "Go on", "")),
        ("3.4: no wants", Prompt("3.4", "no wants", "")),
    ],
)
def test_the_prompt_is_parsed_from_its_variable(text: str, prompt: Prompt | None) -> None:
    assert parse_prompt(text) == prompt


def test_the_status_block_fits_80_columns_and_shows_what_is_set() -> None:
    status = status_from(
        {
            "Cell": "demo",
            "State": "Held",
            "Mode": "Maintenance",
            "LegalCommands": ["Unhold", "Stop", "Abort"],
            "BatchId": "B-0007",
            "Recipe": "press-fit",
            "RecipeVersion": 3,
            "RecipeSha256": "0123456789abcdef" * 4,
            "Parameters": [f"p{i}=value number {i}" for i in range(12)],
            "Produced": 4,
            "Rejected": 1,
            "StopReason": "held by the operator",
            "ActiveTrips": None,  # a null array: none
            "Forced": ["conveyor.run=true"],
            "Security": "no security (loopback, development only)",
        }
    )
    lines = status_lines(status)
    assert max(len(line) for line in lines) <= WIDTH
    assert "state       Held (mode Maintenance)" in lines
    assert "recipe      press-fit v3 (sha 0123456789ab)" in lines
    assert "parts       produced 4, rejected 1" in lines
    assert "forced      conveyor.run=true" in lines
    assert not any(line.startswith(("trips", "prompt", "paused", "breakpoints")) for line in lines)
    parameters = [line for line in lines if "value number" in line]
    assert len(parameters) > 1 and parameters[1].startswith(" " * 12)
