"""One capability to write: only the egress guard can reach a write-capable descriptor on the radio's port.

Three layers, each with a negative control:
  1. the kernel: the link keeps an O_RDONLY descriptor (tests/han_reader/test_link.py shows write(2) on it fails
     with EBADF);
  2. the object graph: from every object the HAN loop holds (the link, the Radio, the service), following
     attributes, containers and bound methods, no write-capable port is reachable; the guard keeps it in
     a closure, not an attribute;
  3. the source: outside egress_guard.py and link.py, no module of the HAN process uses the introspection
     that could reach into a closure (or any other way to a descriptor), calls .write(), or is handed
     `attach`; link.py opens its own descriptor read-only and never writes.
"""
import ast
import collections
import os
import pathlib
import pty

import pytest
import serial

from openseg.han_reader.egress_guard import EgressGuard
from openseg.han_reader.link import SerialLink
from openseg.han_reader.radio import Radio
from openseg.han_reader.service import HanService

from tests.support.fake_radio import FakeClock
from tests.support.han_fixtures import HAN, RecordingSender

ROOT = pathlib.Path(__file__).resolve().parents[2]
HAN_DIR = ROOT / "openseg" / "han_reader"
# Names that lead into closures, frames or other objects' internals, or to descriptors by other routes.
INTROSPECTION = {"__closure__", "cell_contents", "__self__", "__func__", "__dict__", "__globals__", "__code__",
                 "f_locals", "f_globals", "f_back", "gi_frame", "__wrapped__", "__reduce__", "__reduce_ex__",
                 "getattr", "setattr", "vars", "globals", "locals", "eval", "exec", "compile", "__import__",
                 "__getattribute__", "__builtins__", "attrgetter", "methodcaller", "modules"}
# Attribute names that write, or open a file to write (a re-opened device path or /proc/self/fd/N).
WRITING = {"write", "writelines", "write_bytes", "write_text", "attach", "_write", "FileHandler"}
FORBIDDEN_MODULES = {"gc", "inspect", "ctypes", "serial", "termios", "fcntl", "pty", "tty", "io", "mmap",
                     "subprocess", "importlib", "pickle", "marshal", "operator", "pathlib", "shutil", "codecs",
                     "posix", "builtins", "multiprocessing", "asyncio"}
FORBIDDEN_OS = {"write", "writev", "pwrite", "pwritev", "open", "openat", "dup", "dup2", "fdopen", "sendfile",
                "system", "popen", "fork", "forkpty", "openpty", "listdir", "scandir"}
FORBIDDEN_OS_PREFIXES = ("spawn", "exec", "posix_spawn")


def violations(source: str) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Name) and node.id in INTROSPECTION:
            found.append(node.id)
        elif isinstance(node, ast.Attribute):
            if node.attr in INTROSPECTION or node.attr in WRITING or node.attr == "os":   # logging.os
                found.append(f".{node.attr}")
            # os's writers by any name (`o.write` after `import os as o`, `logging.os.pwrite`), except
            # `open`, which the link view has too (os.open by name only)
            if (node.attr in FORBIDDEN_OS - {"open"} or node.attr.startswith(FORBIDDEN_OS_PREFIXES)) or (
                    isinstance(node.value, ast.Name) and node.value.id == "os" and node.attr == "open"):
                found.append(f"os.{node.attr}")
        elif isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name.split(".")[0] in FORBIDDEN_MODULES]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in FORBIDDEN_MODULES | {"os"}:
            found.append(node.module)       # `from os import write` would hide os.write from the check above
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "open":
            found.append("open()")
        elif isinstance(node, ast.keyword) and node.arg in ("file", "filename") \
                and ast.unparse(node.value) not in ("sys.stderr", "sys.stdout"):
            found.append(f"{node.arg}=")     # print(..., file=f) writes; basicConfig(filename=) opens
    return found


def test_no_module_but_the_guard_and_the_link_can_reach_a_writer():
    for path in sorted(HAN_DIR.glob("*.py")):
        if path.name in ("egress_guard.py", "link.py"):
            continue
        found = violations(path.read_text())
        if path.name == "main.py":      # the one hand-over: SerialLink(..., guard.attach, ...)
            assert found.count(".attach") == 1, found
            found.remove(".attach")
        assert found == [], f"{path.name}: {found}"


def test_the_scan_catches_the_plants_it_is_for():
    """Negative controls: each way around the guard seen so far is flagged."""
    plants = ["self.link._serial.writelines(frames)", "self.guard._write(b'x')",
              "self.guard.send.__closure__[0].cell_contents.write(b'x')", "import gc", "os.write(3, b'x')",
              "getattr(self.guard, '_write')(b'x')", "from serial import Serial", "open('/dev/ttyUSB0', 'wb')",
              "self.radio.guard.attach(port)", "vars(self.guard)",
              # found by the security lab's review: each passed the scan before
              "pathlib.Path(self.link.port).write_bytes(frame)", "import pathlib",
              "from os import write as w", "import operator", "operator.attrgetter('_write')(self.guard)",
              "object.__getattribute__(self.guard, 'send')", "__builtins__['open'](port, 'wb')",
              "import codecs", "import shutil", "os.spawnlp(os.P_WAIT, 'sh', 'sh', '-c', cmd)",
              "os.posix_spawnp('sh', argv, {})", "logging.FileHandler(self.link.port)",
              "os.listdir('/proc/self/fd')", "sys.modules['io'].open(port, 'w', encoding='latin-1')",
              "print(frame, file=f, end='')", "logging.basicConfig(filename=port)", "logging.os.pwrite(3, b'x', 0)",
              "o.write(3, b'x')"]
    for plant in plants:
        assert violations(plant), plant


def test_the_link_opens_its_own_descriptor_read_only_and_never_writes():
    tree = ast.parse((HAN_DIR / "link.py").read_text())
    opens = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)
             and n.func.attr == "open" and isinstance(n.func.value, ast.Name) and n.func.value.id == "os"]
    assert len(opens) == 1
    flags = {n.attr for n in ast.walk(opens[0].args[1]) if isinstance(n, ast.Attribute)}
    assert "O_RDONLY" in flags and not flags & {"O_WRONLY", "O_RDWR"}
    assert not [n for n in ast.walk(tree) if isinstance(n, ast.Attribute) and n.attr in ("write", "writelines")]


def reachable(*roots) -> list:
    """Every object reachable from `roots` through attributes, containers and bound methods (not through
    closures or frames, which only the forbidden introspection reaches)."""
    seen, order, queue = set(), [], collections.deque(roots)
    while queue:
        obj = queue.popleft()
        if id(obj) in seen or isinstance(obj, (str, bytes, int, float, bool, type(None), type)):
            continue
        seen.add(id(obj))
        order.append(obj)
        if isinstance(obj, dict):
            queue.extend(obj.keys())
            queue.extend(obj.values())
        elif isinstance(obj, (list, tuple, set, frozenset, collections.deque)):
            queue.extend(obj)
        elif hasattr(obj, "__func__") and hasattr(obj, "__self__"):      # a bound method
            queue.append(obj.__self__)
        elif not callable(obj) or hasattr(obj, "__dict__"):
            queue.extend(getattr(obj, "__dict__", {}).values())
            for slot in getattr(type(obj), "__slots__", ()):
                if hasattr(obj, slot):
                    queue.append(getattr(obj, slot))
    return order


@pytest.fixture
def wired(tmp_path):
    """main.py's wiring on a real pty, the port open."""
    master, slave = pty.openpty()
    path = tmp_path / "xbee"
    path.symlink_to(os.ttyname(slave))
    os.close(slave)
    clock = FakeClock()
    han = {**HAN, "serial_port": str(path)}
    guard = EgressGuard(lambda line: None, clock, han["poll_interval_s"])
    link = SerialLink(str(path), han["baudrate"], guard.attach)
    radio = Radio(link, guard, clock)
    service = HanService(han, link, radio, guard, RecordingSender(clock), clock, notify=lambda *a: True)
    link.open()
    yield link, radio, service, guard
    link.close()
    os.close(master)


def writers(objects) -> list:
    return [o for o in objects if isinstance(o, serial.Serial)]


def test_no_write_capable_port_is_reachable_from_what_the_loop_holds(wired):
    link, radio, service, guard = wired
    objects = reachable(link, radio, service, guard)
    assert radio in objects and guard in objects and link in objects    # the walk does reach them
    assert writers(objects) == []


def closing_over(fn, target, seen=()) -> bool:
    """Whether function `fn` holds `target` in its closure, directly or through functions it closes over."""
    if id(fn) in seen:
        return False
    for cell in getattr(fn, "__closure__", None) or ():
        held = cell.cell_contents
        if held is target or (callable(held) and closing_over(held, target, (*seen, id(fn)))):
            return True
    return False


def port_holders(objects, port) -> list:
    """The reachable functions (or bound methods' functions) that could reach the port through a closure."""
    return [f for f in (getattr(o, "__func__", o) for o in objects) if callable(f) and closing_over(f, port)]


def test_the_only_reachable_functions_that_hold_the_port_are_attach_and_the_checking_send(wired):
    """A closure keeps the port out of the walk above, but a function that closes over it is as good as
    the port: the guard's unchecked write must not be reachable (as the attribute `_write` it was), only
    `send`, which checks every frame, and `attach`, which only replaces or closes the port."""
    link, radio, service, guard = wired
    port = guard.attach.__closure__[0].cell_contents
    assert isinstance(port, serial.Serial) and port.is_open
    holders = port_holders(reachable(link, radio, service, guard), port)
    assert sorted(f.__name__ for f in holders) == ["attach", "send"]


def test_the_closure_walk_finds_a_planted_unchecked_write(wired):
    """Negative control: the guard's inner write (reached here by the introspection the source scan
    forbids), planted on the link, is found."""
    link, radio, service, guard = wired
    port = guard.attach.__closure__[0].cell_contents
    link.write = next(c.cell_contents for c in guard.send.__closure__ if getattr(c.cell_contents, "__name__", "")
                      == "write")
    assert sorted(f.__name__ for f in port_holders(reachable(service), port)) == ["attach", "send", "write"]


def test_the_reachability_walk_finds_a_planted_writer(wired):
    """Negative control: put the port where the issue found it (`link._serial`), or in the guard's
    attributes, and the walk finds it."""
    link, radio, service, guard = wired
    port = serial.Serial()          # unopened: only its type matters to the walk
    link._serial = port
    assert writers(reachable(service)) == [port]
    del link._serial
    guard._port = port
    assert writers(reachable(radio)) == [port]
