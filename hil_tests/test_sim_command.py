"""A cell file no project file describes, served by `cellctl sim` in its own process and read and
written by third-party clients (raw pymodbus and asyncua) and by `cellctl read/write`."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from asyncua import Client, ua
from pymodbus.client import AsyncModbusTcpClient

from cellctl.cell import load_cell
from cellctl.testing import cli, free_port, serve, serve_in_child

CELL = """\
cell: bottling
devices:
  filler: {{driver: modbus-tcp, host: 127.0.0.1, port: {modbus_port}, unit: 7, poll: 50ms,
            timeout: 300ms, retries: 1}}
  capper: {{driver: opcua, endpoint: "opc.tcp://127.0.0.1:{opcua_port}/capper",
            publishing_interval: 50ms, timeout: 1s}}
tags:
  filler.enable:    {{device: filler, address: "coil:3", access: rw}}
  filler.volume_ml: {{device: filler, address: "hr:10", type: float32, access: rw}}
  filler.count:     {{device: filler, address: "hr:12", type: uint32, word_order: CDAB, access: rw}}
  filler.level:     {{device: filler, address: "ir:0", type: int16}}
  capper.torque_Nm: {{device: capper, node: "ns=3;i=1001", type: float64, access: rw}}
  capper.batch:     {{device: capper, node: "ns=3;s=Batch.Name", type: string, access: rw}}
  capper.ready:     {{device: capper, node: "ns=3;s=Ready", type: bool}}
methods:
  capper.home: {{device: capper, node: "ns=3;s=Capper", method: "3:Home", args: {{speed: int32}},
                result: bool}}
"""


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """`cellctl sim` serving the bottling cell in a child process; the cell file it wrote."""
    folder = tmp_path_factory.mktemp("bottling")
    cell = folder / "cell.yaml"
    cell.write_text(CELL.format(modbus_port=free_port(), opcua_port=free_port()), encoding="utf-8")
    with serve_in_child(cell, folder / "served.yaml") as child:
        yield child.cell_file
    out = "\n".join(child.printed)
    assert "filler" in out and "capper" in out


def cellctl_values(capsys: pytest.CaptureFixture[str], cell: Path) -> dict[str, object]:
    """Every tag through `cellctl read --json`."""
    code, out, err = cli(capsys, "read", "--cell", str(cell), "--json")
    assert code == 0, err
    return {row["tag"]: row["value"] for row in json.loads(out)}


def test_serves_the_cell_files_own_ports(served: Path) -> None:
    cell = load_cell(served)
    source = load_cell(served.parent / "cell.yaml")
    assert cell.devices["filler"].port == source.devices["filler"].port  # type: ignore[union-attr]
    assert cell.devices["capper"].endpoint == source.devices["capper"].endpoint  # type: ignore[union-attr]


def test_raw_pymodbus_writes_are_what_cellctl_reads(
    served: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    filler = load_cell(served).devices["filler"]

    async def third_party() -> None:
        client = AsyncModbusTcpClient("127.0.0.1", port=filler.port, timeout=1, retries=0)  # type: ignore[union-attr]
        assert await client.connect()
        try:
            regs = client.convert_to_registers(41.5, client.DATATYPE.FLOAT32)
            assert not (await client.write_registers(10, regs, device_id=7)).isError()
            count = client.convert_to_registers(70000, client.DATATYPE.UINT32, word_order="little")
            assert not (await client.write_registers(12, count, device_id=7)).isError()
            assert not (await client.write_coil(3, True, device_id=7)).isError()
        finally:
            client.close()

    asyncio.run(third_party())
    got = cellctl_values(capsys, served)
    assert got["filler.volume_ml"] == 41.5
    assert got["filler.count"] == 70000
    assert got["filler.enable"] is True
    assert got["filler.level"] == 0


def test_cellctl_writes_are_what_raw_pymodbus_reads(
    served: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = cli(
        capsys,
        "write",
        "--cell",
        str(served),
        "filler.volume_ml=0.1",
        "filler.count=123456",
        "filler.enable=false",
    )
    assert code == 0, err
    filler = load_cell(served).devices["filler"]

    async def third_party() -> tuple[float, int, bool]:
        client = AsyncModbusTcpClient("127.0.0.1", port=filler.port, timeout=1, retries=0)  # type: ignore[union-attr]
        assert await client.connect()
        try:
            regs = (await client.read_holding_registers(10, count=4, device_id=7)).registers
            coils = (await client.read_coils(3, count=1, device_id=7)).bits
        finally:
            client.close()
        volume = client.convert_from_registers(regs[:2], client.DATATYPE.FLOAT32)
        count = client.convert_from_registers(regs[2:], client.DATATYPE.UINT32, word_order="little")
        return float(volume), int(count), bool(coils[0])  # type: ignore[arg-type]

    volume, count, enable = asyncio.run(third_party())
    assert abs(volume - 0.1) < 1e-7
    assert count == 123456
    assert enable is False


def test_raw_asyncua_and_cellctl_see_the_same_nodes(
    served: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    endpoint = load_cell(served).devices["capper"].endpoint  # type: ignore[union-attr]

    async def third_party_write() -> None:
        async with Client(endpoint, timeout=2) as client:
            await client.get_node("ns=3;i=1001").write_value(
                ua.Variant(7.25, ua.VariantType.Double)
            )
            with pytest.raises(ua.UaStatusCodeError):  # a read-only node refuses any client
                await client.get_node("ns=3;s=Ready").write_value(
                    ua.Variant(True, ua.VariantType.Boolean)
                )

    asyncio.run(third_party_write())
    got = cellctl_values(capsys, served)
    assert got["capper.torque_Nm"] == 7.25
    assert got["capper.ready"] is False

    code, _, err = cli(
        capsys, "write", "--cell", str(served), "capper.batch=LOT-42", "capper.torque_Nm=3.5"
    )
    assert code == 0, err

    async def third_party_read() -> tuple[object, object, object]:
        async with Client(endpoint, timeout=2) as client:
            batch = await client.get_node("ns=3;s=Batch.Name").read_value()
            torque = await client.get_node("ns=3;i=1001").read_value()
            capper = client.get_node("ns=3;s=Capper")
            homed = await capper.call_method("3:Home", ua.Variant(5, ua.VariantType.Int32))
            return batch, torque, homed

    batch, torque, homed = asyncio.run(third_party_read())
    assert (batch, torque) == ("LOT-42", 3.5)
    assert homed is False  # the generic simulator answers with the result type's zero value


def test_cellctl_check_agrees_with_the_served_cell(
    served: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = cli(capsys, "check", str(served))
    assert code == 0, out + err


def test_nan_reads_as_null_in_strict_json(served: Path, capsys: pytest.CaptureFixture[str]) -> None:
    filler = load_cell(served).devices["filler"]

    async def write_nan() -> None:
        client = AsyncModbusTcpClient("127.0.0.1", port=filler.port, timeout=1, retries=0)  # type: ignore[union-attr]
        assert await client.connect()
        try:
            regs = client.convert_to_registers(float("nan"), client.DATATYPE.FLOAT32)
            assert not (await client.write_registers(10, regs, device_id=7)).isError()
        finally:
            client.close()

    asyncio.run(write_nan())
    code, out, err = cli(capsys, "read", "--cell", str(served), "--json", "filler.volume_ml")

    def refuse(constant: str) -> object:
        raise AssertionError(f"not JSON: {constant}")

    rows = json.loads(out, parse_constant=refuse)
    assert code == 0, err
    assert rows[0]["value"] is None and rows[0]["text"] == "nan"


def test_sim_on_a_port_in_use_exits_2_naming_it(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        cell = tmp_path / "cell.yaml"
        cell.write_text(
            f"cell: clash\ndevices:\n  plc: {{driver: modbus-tcp, host: 127.0.0.1, port: {port}}}\n"
            "tags:\n  plc.x: {device: plc, address: 'hr:0'}\n",
            encoding="utf-8",
        )
        code, _, err = cli(capsys, "sim", str(cell))
    assert code == 2
    assert str(port) in err and "Traceback" not in err


def test_an_rtu_device_with_parity_is_served_and_read(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    cell = tmp_path / "cell.yaml"
    cell.write_text(
        "cell: par\ndevices:\n"
        "  p: {driver: modbus-rtu, port: /dev/ttyUSB9, parity: E, unit: 5, timeout: 300ms}\n"
        "tags:\n  p.x: {device: p, address: 'hr:0', access: rw}\n",
        encoding="utf-8",
    )
    (tmp_path / "served").mkdir()
    with serve(cell, tmp_path / "served") as served:
        code, _, err = cli(capsys, "write", "--cell", str(served.cell_file), "p.x=77")
        assert code == 0, err
        assert cellctl_values(capsys, served.cell_file) == {"p.x": 77}


def _free_port_v6() -> int:
    """A port nobody listens on at ::1 right now."""
    with socket.socket(socket.AF_INET6) as probe:
        probe.bind(("::1", 0))
        return int(probe.getsockname()[1])


@pytest.mark.extended  # 10 s: `cellctl sim` on [::1]; the default suite serves 127.0.0.1
def test_sim_serves_ipv6_loopback_with_bracketed_endpoints(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    cell = tmp_path / "cell.yaml"
    modbus_port, opcua_port = _free_port_v6(), _free_port_v6()
    cell.write_text(CELL.format(modbus_port=modbus_port, opcua_port=opcua_port), encoding="utf-8")
    written = tmp_path / "served.yaml"
    with serve_in_child(cell, written, "--host", "::1") as child:
        served = load_cell(written)
        assert served.devices["filler"].host == "::1"  # type: ignore[union-attr]
        endpoint = f"opc.tcp://[::1]:{opcua_port}/capper"
        assert served.devices["capper"].endpoint == endpoint  # type: ignore[union-attr]
        code, _, err = cli(
            capsys, "write", "--cell", written, "filler.count=7", "capper.torque_Nm=2.5"
        )
        assert code == 0, err
        assert cellctl_values(capsys, written)["filler.count"] == 7

        async def third_party() -> tuple[list[int], object]:
            modbus = AsyncModbusTcpClient("::1", port=modbus_port, timeout=1, retries=0)
            assert await modbus.connect()
            try:
                regs = (await modbus.read_holding_registers(12, count=2, device_id=7)).registers
            finally:
                modbus.close()
            async with Client(endpoint, timeout=2) as client:
                torque = await client.get_node("ns=3;i=1001").read_value()
            return regs, torque

        regs, torque = asyncio.run(third_party())
        assert regs == [7, 0]  # CDAB: the low word first
        assert torque == 2.5
        with socket.socket() as v4:  # ::1 only: nothing on 127.0.0.1
            assert v4.connect_ex(("127.0.0.1", modbus_port)) != 0
    out = "\n".join(child.printed)
    assert f"[::1]:{modbus_port}" in out and endpoint in out


@pytest.fixture
def busy_cell(tmp_path: Path) -> Iterator[Path]:
    """A cell whose only device is on a port already in use: any attempt to serve it exits 2."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        cell = tmp_path / "cell.yaml"
        cell.write_text(
            f"cell: clash\ndevices:\n  plc: {{driver: modbus-tcp, host: 127.0.0.1, "
            f"port: {busy.getsockname()[1]}}}\ntags:\n  plc.x: {{device: plc, address: 'hr:0'}}\n",
            encoding="utf-8",
        )
        yield cell


def test_sim_refuses_an_empty_host(capsys: pytest.CaptureFixture[str], busy_cell: Path) -> None:
    code, _, err = cli(capsys, "sim", busy_cell, "--host", "")
    assert code == 1
    assert "--host ''" in err and "Traceback" not in err


def _fifo(folder: Path, _cell: Path) -> Path:
    os.mkfifo(folder / "pipe")
    return folder / "pipe"


def _char_device(folder: Path, _cell: Path) -> Path:
    # A device node of our own (the same as /dev/null): a regression replaces it, not /dev/null.
    try:
        os.mknod(folder / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    except PermissionError:
        pytest.skip("creating a device node needs CAP_MKNOD")
    return folder / "null"


def _folder(folder: Path, _cell: Path) -> Path:
    (folder / "sub").mkdir()
    return folder / "sub"


def _itself(_folder: Path, cell: Path) -> Path:
    return cell


def _symlink(folder: Path, cell: Path) -> Path:
    (folder / "link.yaml").symlink_to(cell)
    return folder / "link.yaml"


def _hard_link(folder: Path, cell: Path) -> Path:
    (folder / "hard.yaml").hardlink_to(cell)
    return folder / "hard.yaml"


def _other_path(folder: Path, cell: Path) -> Path:
    (folder / "sub").mkdir()
    return folder / "sub" / ".." / cell.name


@pytest.mark.parametrize(
    ("make", "says"),
    [
        (_fifo, "is a named pipe (FIFO): name a regular file"),
        (_char_device, "is a character device: name a regular file"),
        (_folder, "is a folder: name a regular file"),
        (_itself, "is the cell file being served"),
        (_symlink, "is the cell file being served"),
        (_hard_link, "is the cell file being served"),
        (_other_path, "is the cell file being served"),
    ],
)
def test_sim_refuses_to_write_the_cell_over_anything_but_another_regular_file(
    capsys: pytest.CaptureFixture[str],
    busy_cell: Path,
    make: Callable[[Path, Path], Path],
    says: str,
) -> None:
    source = busy_cell.read_bytes()
    target = make(busy_cell.parent, busy_cell)
    kind = stat.S_IFMT(os.lstat(target).st_mode)
    code, _, err = cli(capsys, "sim", busy_cell, "--write-cell", target)
    assert code == 1, err  # before any port opens: the busy port would have made it 2
    assert err.startswith(f"error: --write-cell {target}: {says}"), err
    assert stat.S_IFMT(os.lstat(target).st_mode) == kind
    assert busy_cell.read_bytes() == source
