"""Emulator command line, load file and UART pacing, in-process (no pty needed for the pacing maths)."""
from fractions import Fraction

import pytest

from openseg_emulator.load_file import LoadFile, LoadFileError
from openseg_emulator.main import main as emulator_main
from openseg_emulator.pty_link import UartWriter


@pytest.mark.parametrize("args,message", [
    (["--drop-rate", "1.5"], "--drop-rate must be within [0, 1]"),
    (["--corrupt-rate", "-0.1"], "--corrupt-rate must be within [0, 1]"),
    (["--meter-address", "0xFFFF"], "--meter-address must be within"),
    (["--meter-endpoint", "0"], "--meter-endpoint must be within"),
    (["--multiplier", "nope"], "--multiplier must be an integer"),
    (["--load-w", "abc"], "--load-w: not a number of watts"),
    (["--load-w", "5", "--load-file", "x"], "not allowed with argument"),
    (["--start-received-kwh", "-1"], "--start-received-kwh must be >= 0"),
    (["--start-received-kwh", "lots"], "--start-received-kwh must be a number of kWh"),
    (["--start-kwh", "-2"], "--start-kwh must be >= 0"),
])
def test_bad_options_exit_2_naming_the_option(tmp_path, capsys, args, message):
    with pytest.raises(SystemExit) as exc:
        emulator_main(["--link", str(tmp_path / "xbee"), *args])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_refuses_to_replace_a_file_that_is_not_a_symlink(tmp_path, capsys):
    (tmp_path / "xbee").write_text("precious")
    with pytest.raises(SystemExit) as exc:
        emulator_main(["--link", str(tmp_path / "xbee")])
    assert exc.value.code == 2 and "is not a symlink" in capsys.readouterr().err
    assert (tmp_path / "xbee").read_text() == "precious"


def test_missing_load_file_exits_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        emulator_main(["--link", str(tmp_path / "xbee"), "--load-file", str(tmp_path / "nope")])
    assert exc.value.code == 2 and "--load-file: cannot read" in capsys.readouterr().err


def test_load_file_follows_changes_and_keeps_the_load_on_bad_content(tmp_path):
    path = tmp_path / "w"
    path.write_text("1200\n")
    lf = LoadFile(path)
    assert lf.watts == 1200 and lf.check() == (None, None)
    path.write_text("1500.25")
    assert lf.check() == (Fraction("1500.25"), None)
    path.write_text("")                              # caught half-written
    watts, problem = lf.check()
    assert watts is None and "not a number of watts" in problem and lf.watts == Fraction("1500.25")
    assert lf.check(force=True) == (None, None), "the same bad content is reported once"
    path.write_text("-40")
    assert lf.check() == (-40, None)
    path.write_text("-40")                           # same value rewritten: no change to report
    assert lf.check(force=True) == (None, None)
    path.write_text("1e9")
    assert "beyond" in lf.check()[1]
    with pytest.raises(LoadFileError):
        LoadFile(tmp_path / "missing")


class FakeLink:
    """Records what the writer writes and when; `accept` limits how much one write takes."""

    def __init__(self):
        self.writes = []
        self.accept = None

    def write(self, data):
        n = len(data) if self.accept is None else min(self.accept, len(data))
        self.writes.append(bytes(data[:n]))
        return n


def test_uart_pacing_writes_each_byte_when_it_has_left_the_wire():
    link, clock = FakeLink(), [0.0]
    uart = UartWriter(link, baud=1000, wall=lambda: clock[0])      # 10 ms a byte
    done = []
    uart.send(b"abcde", now=0.0, tag="first")
    uart.send(b"xy", now=0.0, tag="second")
    assert uart.next_due() == pytest.approx(0.010)
    for t in (0.005, 0.010, 0.0299, 0.030, 0.050, 0.060, 0.070):
        clock[0] = t
        uart.pump(t, done.append)
    assert link.writes == [b"a", b"b", b"c", b"de", b"x", b"y"]
    assert [(s.tag, s.complete, s.t_start, s.t_end) for s in done] == [
        ("first", True, 0.010, 0.050), ("second", True, 0.060, 0.070)]
    assert uart.next_due() is None
    # An idle line starts the next frame at once: its first byte is due one byte time later.
    uart.send(b"z", now=1.0)
    assert uart.next_due() == pytest.approx(1.010)


def test_unpaced_writer_and_lost_frames():
    link = FakeLink()
    uart = UartWriter(link, baud=0, wall=lambda: 5.0)
    done = []
    uart.send(b"hello", now=0.0, tag=1)
    link.accept = 2                                  # the pty is full: the rest of the frame is lost
    uart.send(b"world", now=0.0, tag=2)
    uart.pump(0.0, done.append)
    assert [(s.tag, s.complete) for s in done] == [(1, False), (2, False)]
    link.accept = None
    uart.send(b"again", now=0.0, tag=3)
    uart.pump(0.0, done.append)
    assert link.writes[-1] == b"again" and done[-1].complete
    uart.send(b"later", now=0.0, tag=4)
    assert [s.tag for s in uart.clear(0.0)] == [4] and uart.next_due() is None
