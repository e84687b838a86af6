"""The command line: configuration errors name the key and exit 2, before anything is opened."""
import pytest

from openseg.han_reader.main import main


def write(tmp_path, han_extra=""):
    path = tmp_path / "gateway.toml"
    path.write_text(f'[han]\nserial_port = "{tmp_path}/no-such-tty"\n{han_extra}\n'
                    f'[channel]\nsocket_path = "{tmp_path}/readings.sock"\n')
    return str(path)


@pytest.mark.parametrize("extra, key", [
    ("poll_interval_s = 1.0", "poll_interval_s"),                   # the utility's 7 s floor
    ("poll_interval_s = 6.9", "poll_interval_s"),
    ("baudrate = 12345", "baudrate"),
    ("response_timeout_s = 8.0", "response_timeout_s"),
    ("frobnicate = true", "frobnicate"),
])
def test_config_errors_exit_2_naming_the_key(tmp_path, capsys, extra, key):
    assert main(["--config", write(tmp_path, extra)]) == 2
    err = capsys.readouterr().err
    assert f"[han] {key}" in err and err.count("\n") == 1
    assert not (tmp_path / "readings.sock").exists()


def test_the_floor_is_lifted_only_by_the_lab_switch(tmp_path, capsys):
    code = main(["--config", write(tmp_path, "poll_interval_s = 1.0\nallow_fast_poll = true\nresponse_timeout_s = 0.5"),
                 "--check"])
    assert code == 1                                   # valid config; the port is simply not there
    assert "serial port: CANNOT OPEN" in capsys.readouterr().out


def test_missing_config_file(tmp_path, capsys):
    assert main(["--config", str(tmp_path / "nope.toml")]) == 2
    assert "no such config file" in capsys.readouterr().err
