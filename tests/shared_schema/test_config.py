"""The config file: defaults, relative paths, and that every refusal names its key."""
import pytest

from openseg.shared_schema import config


def test_config_defaults_and_relative_paths(tmp_path):
    path = tmp_path / "gateway.toml"
    path.write_text('[han]\nserial_port = "/dev/ttyUSB0"\n[channel]\nsocket_path = "run/r.sock"\n')
    cfg = config.load(str(path))
    assert cfg.han["poll_interval_s"] == 7.0 and cfg.han["baudrate"] == 9600
    assert cfg.channel["socket_path"] == str(tmp_path / "run/r.sock")
    assert cfg.lan["certificate"] == str(tmp_path / "tls/cert.pem")
    assert cfg.lan["currency"] == 840                   # ESPI ReadingType currency: USD unless set
    path.write_text(path.read_text() + '[lan]\ncurrency = 978\n')
    assert config.load(str(path)).lan["currency"] == 978


@pytest.mark.parametrize("text, key", [
    ('[han]\nserial_port = "x"\npoll_interval_s = 1.0\n[channel]\nsocket_path = "s"\n', "poll_interval_s"),
    ('[han]\nserial_port = "x"\nbaudrate = 1234\n[channel]\nsocket_path = "s"\n', "baudrate"),
    ('[han]\nserial_port = "x"\nbaud = 9600\n[channel]\nsocket_path = "s"\n', "baud"),
    ('[han]\nserial_port = 5\n[channel]\nsocket_path = "s"\n', "serial_port"),
    ('[han]\nserial_port = "x"\n[channel]\n', "socket_path"),
    ('[han]\nserial_port = "x"\n[channel]\nsocket_path = "s"\n[lan]\nport = 70000\n', "port"),
    ('[han]\nserial_port = "x"\n[channel]\nsocket_path = "s"\n[lan]\nport = true\n', "port"),
    ('[han]\nserial_port = "x"\n[channel]\nsocket_path = "s"\n[lan]\ntime_zone = "Mars/Base"\n', "time_zone"),
    ('[han]\nserial_port = "x"\n[channel]\nsocket_path = "s"\n[lan]\ncurrency = 1000\n', "currency"),
    ('[han]\nserial_port = "x"\n[channel]\nsocket_path = "s"\n[lan]\ncurrency = "EUR"\n', "currency"),
    ('[han]\nserial_port = "x"\n[channel]\nsocket_path = "s"\n[web]\n', "web"),
    ('[han]\nserial_port = "x"\nresponse_timeout_s = 9.0\n[channel]\nsocket_path = "s"\n', "response_timeout_s"),
    ('[han\n', "not valid TOML"),
])
def test_config_errors_name_the_key(tmp_path, text, key):
    path = tmp_path / "gateway.toml"
    path.write_text(text)
    with pytest.raises(config.ConfigError, match=key):
        config.load(str(path))


def test_fast_poll_needs_the_lab_switch(tmp_path):
    path = tmp_path / "gateway.toml"
    path.write_text('[han]\nserial_port = "x"\npoll_interval_s = 0.5\nresponse_timeout_s = 0.2\n'
                    'allow_fast_poll = true\n[channel]\nsocket_path = "s"\n')
    assert config.load(str(path)).han["poll_interval_s"] == 0.5


def test_missing_file(tmp_path):
    with pytest.raises(config.ConfigError, match="no such config file"):
        config.load(str(tmp_path / "nope.toml"))
