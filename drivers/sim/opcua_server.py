"""An asyncua server that exposes one device's process image with the cell file's exact NodeIds."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import fcntl
import inspect
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import asyncua
from asyncua import ua
from asyncua.common.callback import CallbackType, ServerItemCallback
from asyncua.server.server import Server
from asyncua.ua.attribute_ids import AttributeIds
from asyncua.ua.object_ids import ObjectIds
from asyncua.ua.status_codes import StatusCodes

from drivers.base import Value
from drivers.codecs import check_value, zero_value
from drivers.config import url_host
from drivers.errors import WriteRejected
from drivers.opcua_types import (
    datatype_node,
    from_ua,
    ns0_node,
    parse_node_id,
    status_code,
    to_variant,
    variant_type,
)
from drivers.points import Access, MethodSpec, OpcuaPoint
from drivers.sim.image import ProcessImage
from drivers.sim.plant.base import MethodHandler

log = logging.getLogger("drivers.sim.opcua")

# The asyncua server logs every call and connection at INFO; keep it to warnings unless the
# application configured that logger itself.
_QUIET_LOGGERS = ("asyncua.server", "asyncua.common")


def default_cache_dir() -> Path:
    """Where the asyncua address-space cache lives: $XDG_CACHE_HOME/cellctl or ~/.cache/cellctl."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "cellctl"


# The cache is shared by every simulator of the user: pytest workers, `cellctl sim` and `demo`
# children may all build it at once on a fresh machine. Each build writes into its own hidden
# folder, made durable, then moved into place with ONE rename of the folder. The rename is
# atomic and never replaces a folder that holds files, so the first complete build wins and is
# never touched again: a reader only opens the shelf inside the final folder, so it never sees
# a half-written set, nor two builds mixed (dbm.dumb reopens PATH.dat by name on every lookup
# for as long as the server runs). A build killed midway leaves only its hidden folder, which
# no reader trusts and a later build removes. (A lock around build+install would also be
# correct, but makes every other start wait on it, and a crash would leave files at the
# trusted path for the next builder to clean up.)
_SHELF = "address-space"  # no dot in the name: asyncua also looks for SHELF.with_suffix(".db")
_BUILD_PREFIX = ".build-"
# A build folder is removed only when no live process holds its lock and it is older than this
# (the age covers the instant between creating the folder and locking it). A build takes 1-3 s.
_STALE_BUILD_AGE = 60.0  # seconds


async def init_with_cache(server: Server, cache_dir: Path) -> None:
    """`server.init()` from the address-space cache, building the cache on first use."""
    cache = _cache_path(cache_dir)
    if (cache / _SHELF).is_file():
        await server.init(shelf_file=cache / _SHELF)
        return
    build = await asyncio.to_thread(_Build.start, cache_dir)
    try:
        # The building server keeps its address space in memory: it never reads this shelf.
        await server.init(shelf_file=build.path / _SHELF)
        await asyncio.to_thread(build.install, cache)
    finally:
        await asyncio.to_thread(build.close)


def _cache_path(cache_dir: Path) -> Path:
    """The cache's folder, versioned because it is a pickle of asyncua's own node classes."""
    return cache_dir / f"asyncua-{asyncua.__version__}-address-space.d"


class _Build:
    """A private folder a cache is built in, locked (flock) for as long as its builder lives."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd = fd
        self._installed = False

    @classmethod
    def start(cls, cache_dir: Path) -> _Build:
        """A fresh build folder in `cache_dir`, after removing those left by dead builds."""
        cache_dir.mkdir(parents=True, exist_ok=True)
        _remove_dead_builds(cache_dir)
        path = Path(tempfile.mkdtemp(prefix=_BUILD_PREFIX, dir=cache_dir))
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        fcntl.flock(fd, fcntl.LOCK_EX)  # a fresh folder: nobody else holds it
        return cls(path, fd)

    def install(self, cache: Path) -> None:
        """Move the finished build into place as `cache` (see `_install_cache`)."""
        try:
            self._installed = _install_cache(self.path, cache)
        except OSError as err:
            # The cache only saves time: this server already has its address space in memory.
            log.warning("cannot store the address-space cache %s: %s", cache, err)

    def close(self) -> None:
        """Remove the folder unless it was installed, and release the lock."""
        if not self._installed:
            shutil.rmtree(self.path, ignore_errors=True)
        os.close(self._fd)


def _remove_dead_builds(cache_dir: Path) -> None:
    """Remove build folders whose builder died (its lock went with it) and that are not new."""
    for path in cache_dir.glob(f"{_BUILD_PREFIX}*"):
        try:
            # File ages are wall-clock times: compare them with the wall clock.
            if time.time() - path.lstat().st_mtime < _STALE_BUILD_AGE:
                continue
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        except OSError:
            continue  # gone already, or not a folder of ours
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            continue  # its builder is still running
        else:
            shutil.rmtree(path, ignore_errors=True)
        finally:
            os.close(fd)


def _install_cache(build: Path, cache: Path) -> bool:
    """Move a complete build into place with one atomic rename (true if it was this one); the
    first complete build wins."""
    shelf = build / _SHELF
    # shelve falls back to dbm.dumb here (SHELF.dat/.dir/.bak) while asyncua only loads a
    # cache when the bare SHELF (or SHELF.db) exists: without the marker it rebuilds every time.
    if not shelf.exists() and not shelf.with_suffix(".db").exists():
        shelf.touch()
    # Durable before it is visible: after a power cut the folder must not hold empty files.
    for part in build.iterdir():
        _fsync(part)
    _fsync(build)
    try:
        build.rename(cache)
    except OSError as err:
        # ENOTEMPTY/EEXIST: the folder exists. Another process installed its build first,
        # or something else left it there; this server runs from memory either way.
        if not (cache / _SHELF).is_file():
            log.warning(
                "address-space cache %s is incomplete and cannot be replaced (%s): delete that "
                "folder so the next simulator start can rebuild it",
                cache,
                err.strerror,
            )
        return False
    _fsync(cache.parent)
    return True


def _fsync(path: Path) -> None:
    """Flush a file's or a folder's contents to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class OpcuaSimServer:
    """Serves one device's ProcessImage over OPC UA on `host` (127.0.0.1); satisfies SimServer."""

    def __init__(
        self,
        endpoint: str,
        image: ProcessImage,
        methods: Sequence[MethodSpec] = (),
        handlers: Mapping[str, MethodHandler] | None = None,
        cache_dir: Path | None = None,
        host: str = "127.0.0.1",
    ) -> None:
        url = urlparse(endpoint)
        if url.scheme != "opc.tcp":
            raise ValueError(f"{image.device}: endpoint {endpoint!r} is not an opc.tcp:// URL")
        self._image = image
        self._points: dict[str, OpcuaPoint] = {}
        for tag, point in image.points.items():
            if not isinstance(point, OpcuaPoint):
                raise TypeError(f"{image.device}: tag {tag} is not an OPC UA point")
            self._points[tag] = point
        self._methods = tuple(methods)
        self._handlers = dict(handlers or {})
        self._cache_dir = cache_dir if cache_dir is not None else default_cache_dir()
        self._host = host
        self._port = url.port or 0
        self._path = url.path or "/"
        self._node_ids = {
            tag: _parse_node_id(image.device, tag, p.node_id) for tag, p in self._points.items()
        }
        self._tags_by_node: dict[ua.NodeId, list[str]] = {}
        for tag, node_id in self._node_ids.items():
            self._tags_by_node.setdefault(node_id, []).append(tag)
        self._server: Server | None = None
        self._prepared: Server | None = None
        self._clock: asyncio.Task[None] | None = None

    @property
    def endpoint(self) -> str:
        """The URL clients connect to, with the actual port once started."""
        return f"opc.tcp://{url_host(self._host)}:{self._port}{self._path}"

    @property
    def port(self) -> int:
        """The TCP port (0 until the first start when asked for a free one)."""
        return self._port

    async def prepare(self) -> None:
        """Build the address space without opening the endpoint (the slow part of a start)."""
        if self._server is not None or self._prepared is not None:
            return
        for name in _QUIET_LOGGERS:
            logger = logging.getLogger(name)
            if logger.level == logging.NOTSET:
                logger.setLevel(logging.WARNING)
        server = Server()
        await init_with_cache(server, self._cache_dir)
        server.set_endpoint(self.endpoint)
        server.set_server_name(f"cellctl simulator {self._image.device}")
        server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
        server.set_identity_tokens([ua.AnonymousIdentityToken])
        # asyncua's clock task sleeps 1 s and stop() waits for it; ours is cancelled at once.
        server.disable_clock()
        await self._build(server)
        server.subscribe_server_callback(CallbackType.PostWrite, self._on_post_write)
        self._prepared = server

    async def start(self) -> None:
        """Listen (preparing first if needed); a restart reuses the same port."""
        if self._server is not None:
            return
        await self.prepare()
        server, self._prepared = self._prepared, None
        assert server is not None
        await server.start()
        assert server.bserver is not None
        self._port = int(server.bserver.port)
        self._server = server
        self._clock = asyncio.create_task(_run_clock(server))
        log.info("%s: OPC UA simulator listening on %s", self._image.device, self.endpoint)

    async def stop(self) -> None:
        """Close the endpoint and every client connection (a killed device)."""
        server, self._server = self._server, None
        clock, self._clock = self._clock, None
        if clock is not None:
            clock.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await clock
        if server is not None:
            await server.stop()

    async def _publish_model_changes(self) -> None:
        """Publish what a method handler changed before its answer leaves, so a client that
        reads `busy` right after `Pick` returned never sees the value from before the call."""
        changed = self._image.take_dirty()
        if changed:
            await self.publish(self._image.device, changed)

    async def publish(self, device: str, values: dict[str, Value]) -> None:
        """Write model values into the nodes, each as a Variant of its point's type."""
        if device != self._image.device:
            raise KeyError(f"OPC UA simulator of {self._image.device!r} has no device {device!r}")
        server = self._server
        if server is None:
            return  # a stopped device: start() loads the image's values
        now = ua.DateTime.now(datetime.UTC)
        for tag, value in values.items():
            variant = to_variant(self._points[tag].datatype, value)
            datavalue = ua.DataValue(variant, SourceTimestamp=now, ServerTimestamp=now)
            await server.write_attribute_value(self._node_ids[tag], datavalue)

    async def _build(self, server: Server) -> None:
        """Namespaces, method objects, variables and methods, with the cell file's NodeIds."""
        wanted = [n.NamespaceIndex for n in self._node_ids.values()]
        wanted += [
            _parse_node_id(self._image.device, m.name, m.object_node).NamespaceIndex
            for m in self._methods
        ]
        namespaces = await server.get_namespace_array()
        while len(namespaces) <= max(wanted, default=0):
            await server.register_namespace(f"urn:cellctl:sim:ns{len(namespaces)}")
            namespaces = await server.get_namespace_array()
        objects = await self._add_objects(server)
        for tag, point in self._points.items():
            node_id = self._node_ids[tag]
            parent = _parent_of(node_id, objects) or server.nodes.objects
            variant = to_variant(point.datatype, self._image.get(tag))
            name = ua.QualifiedName(str(node_id.Identifier), node_id.NamespaceIndex)
            node = await parent.add_variable(
                node_id, name, variant, datatype=datatype_node(point.datatype)
            )
            if point.access is Access.RW:
                await node.set_writable()
        for method in self._methods:
            await self._add_method(server, method, objects)

    async def _add_objects(self, server: Server) -> dict[ua.NodeId, Any]:
        """The objects the methods live on, created under Objects unless they already exist."""
        objects: dict[ua.NodeId, Any] = {}
        for method in self._methods:
            node_id = _parse_node_id(self._image.device, method.name, method.object_node)
            if node_id in objects:
                continue
            node = server.get_node(node_id)
            exists = server.read_attribute_value(node_id, AttributeIds.NodeClass)
            if exists.StatusCode is not None and exists.StatusCode.is_bad():
                name = ua.QualifiedName(str(node_id.Identifier), node_id.NamespaceIndex)
                node = await server.nodes.objects.add_object(node_id, name)
            objects[node_id] = node
        return objects

    async def _add_method(
        self, server: Server, spec: MethodSpec, objects: dict[ua.NodeId, Any]
    ) -> None:
        """Add one method with its declared argument and result types."""
        parent = objects[_parse_node_id(self._image.device, spec.name, spec.object_node)]
        qname = ua.QualifiedName.from_string(spec.browse_name)
        inputs = [
            ua.Argument(Name=arg.name, DataType=datatype_node(arg.datatype), ValueRank=-1)
            for arg in spec.args
        ]
        outputs = []
        if spec.result is not None:
            outputs.append(
                ua.Argument(Name="result", DataType=datatype_node(spec.result), ValueRank=-1)
            )
        callback = _MethodCallback(
            self._image.device, spec, self._handlers.get(qname.Name), self._publish_model_changes
        )
        # Passing the namespace index lets the server number the method node in that namespace.
        await parent.add_method(qname.NamespaceIndex, qname.Name, callback.call, inputs, outputs)

    def _on_post_write(self, event: ServerItemCallback, _dispatcher: object) -> None:
        """Copy every value a client wrote successfully into the process image."""
        if not event.is_external:
            return
        params: ua.WriteParameters = event.request_params
        results: list[ua.StatusCode] = event.response_params
        for item, status in zip(params.NodesToWrite, results, strict=False):
            if item.AttributeId != AttributeIds.Value or not status.is_good():
                continue
            for tag in self._tags_by_node.get(item.NodeId, ()):
                raw = item.Value.Value.Value if item.Value.Value is not None else None
                try:
                    value = from_ua(self._points[tag].datatype, raw)
                except ValueError:
                    log.warning(
                        "%s: client wrote %r to %s, not a value of its type",
                        self._image.device,
                        raw,
                        tag,
                    )
                    continue
                self._image.accept_client_write(tag, value)


class _MethodCallback:
    """Runs a plant model's handler for an OPC UA method call, mapping failures to status codes."""

    def __init__(
        self,
        device: str,
        spec: MethodSpec,
        handler: MethodHandler | None,
        after: Callable[[], Awaitable[None]],
    ) -> None:
        self.device = device
        self.spec = spec
        self.handler = handler
        self.after = after

    async def call(self, _parent: ua.NodeId, *inputs: ua.Variant) -> Any:
        """asyncua calls this with the object's NodeId and the input Variants.

        A coroutine function (a bound `async def`): asyncua runs anything else in a thread pool.
        """
        spec = self.spec
        if len(inputs) != len(spec.args):
            code = (
                StatusCodes.BadArgumentsMissing
                if len(inputs) < len(spec.args)
                else StatusCodes.BadTooManyArguments
            )
            return status_code(code)
        args: list[Value] = []
        arg_results: list[ua.StatusCode] = []
        for arg, variant in zip(spec.args, inputs, strict=True):
            try:
                if variant.VariantType != variant_type(arg.datatype):
                    raise ValueError(f"{variant.VariantType.name} is not {arg.datatype.value}")
                args.append(from_ua(arg.datatype, variant.Value))
                arg_results.append(ua.StatusCode())
            except ValueError:
                arg_results.append(status_code(StatusCodes.BadTypeMismatch))
        if len(args) != len(spec.args):
            return ua.CallMethodResult(
                StatusCode=status_code(StatusCodes.BadInvalidArgument),
                InputArgumentResults=arg_results,
            )
        try:
            result = await self._run(args)
        except ValueError as err:
            log.warning("%s: method %s refused its arguments: %s", self.device, spec.name, err)
            return status_code(StatusCodes.BadInvalidArgument)
        except Exception as err:
            # asyncua would answer BadUnexpectedError; the machine refusing is an invalid state.
            log.warning("%s: method %s failed: %s", self.device, spec.name, err)
            return status_code(StatusCodes.BadInvalidState)
        if spec.result is None:
            return []
        try:
            return [to_variant(spec.result, check_value(spec.result, result))]
        except WriteRejected as err:
            log.error(
                "%s: method %s handler returned a bad result: %s", self.device, spec.name, err
            )
            return status_code(StatusCodes.BadInternalError)

    async def _run(self, args: list[Value]) -> Any:
        """The handler's result, or the zero value of the result type when there is no handler."""
        if self.handler is None:
            return zero_value(self.spec.result) if self.spec.result is not None else None
        pending = self.handler(*args)
        result = await pending if inspect.isawaitable(pending) else pending
        await self.after()
        return result


async def _run_clock(server: Server) -> None:
    """Keep the server's CurrentTime ticking once a second, as asyncua's own clock would."""
    node = ns0_node(ObjectIds.Server_ServerStatus_CurrentTime)
    while True:
        now = datetime.datetime.now(datetime.UTC)
        await server.write_attribute_value(
            node, ua.DataValue(ua.Variant(now, ua.VariantType.DateTime))
        )
        await asyncio.sleep(1.0)


def _parse_node_id(device: str, what: str, text: str) -> ua.NodeId:
    """A NodeId from its string form; ValueError naming the device and tag if it is malformed."""
    try:
        return parse_node_id(text)
    except ValueError as err:
        raise ValueError(f"{device}: {what}: {err}") from err


def _parent_of(node_id: ua.NodeId, objects: Mapping[ua.NodeId, Any]) -> Any:
    """The method object a variable belongs to by name ('Robot.Busy' under 'Robot'), if any."""
    if not isinstance(node_id.Identifier, str):
        return None
    for object_id, node in objects.items():
        if (
            object_id.NamespaceIndex == node_id.NamespaceIndex
            and isinstance(object_id.Identifier, str)
            and node_id.Identifier.startswith(object_id.Identifier + ".")
        ):
            return node
    return None
