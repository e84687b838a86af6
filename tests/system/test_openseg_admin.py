"""`openseg-admin` through its console script: init, the certificate it makes, and user management."""
from __future__ import annotations

import datetime as dt
import ipaddress
import os
import socket
import stat
import subprocess
import tomllib

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tests.support.lan_fixtures import command, parse_fields, run_admin
from openseg.lan_server.accounts import passwords, users_file
from openseg.shared_schema import config as config_schema


def init(tmp_path, *extra: str, name: str = "gw") -> tuple[str, dict[str, str]]:
    target = str(tmp_path / name)
    out = run_admin("init", "--dir", target, *extra)
    assert out.returncode == 0, out.stderr
    return target, out


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


# -- init ------------------------------------------------------------------------------------------------
def test_init_prints_exactly_the_login_and_writes_a_valid_installation(tmp_path):
    target, out = init(tmp_path, "--lan-port", "9443", "--serial", "/dev/ttyACM3")
    lines = out.stdout.splitlines()
    assert [line.split(": ")[0] for line in lines] == ["url", "username", "password", "subscription",
                                                         "ca certificate"]
    login = parse_fields(out.stdout)
    assert login["url"] == "https://127.0.0.1:9443/"
    assert users_file.check_name(login["username"]) is None
    assert users_file.check_subscription(login["subscription"]) is None

    cfg = config_schema.load(os.path.join(target, "gateway.toml"))
    assert cfg.han["serial_port"] == "/dev/ttyACM3"
    assert cfg.lan["bind"] == "127.0.0.1" and cfg.lan["port"] == 9443
    assert cfg.channel["socket_path"] == os.path.join(target, "run", "readings.sock")
    assert mode(os.path.dirname(cfg.channel["socket_path"])) == 0o710
    assert mode(os.path.join(target, "tls")) == 0o700
    assert cfg.lan["certificate"] == os.path.join(target, "tls", "cert.pem")

    users = users_file.load(cfg.lan["users_file"])
    user = users[login["username"]]
    assert user.subscription == login["subscription"]
    assert passwords.verify_password(login["password"], user.password_hash)
    assert login["password"] not in open(cfg.lan["users_file"]).read()
    assert mode(cfg.lan["private_key"]) == 0o600
    assert mode(cfg.lan["users_file"]) == 0o600


def test_each_init_has_its_own_key_and_password(tmp_path):
    a, out_a = init(tmp_path, name="a")
    b, out_b = init(tmp_path, name="b")
    assert parse_fields(out_a.stdout)["password"] != parse_fields(out_b.stdout)["password"]
    assert parse_fields(out_a.stdout)["subscription"] != parse_fields(out_b.stdout)["subscription"]
    # The user name is not a well-known one either (issue 14: "home" was everyone's first user).
    names = {parse_fields(out_a.stdout)["username"], parse_fields(out_b.stdout)["username"]}
    assert len(names) == 2 and "home" not in names
    assert all(n.startswith("home-") and len(n) == 15 for n in names)
    assert open(f"{a}/tls/key.pem").read() != open(f"{b}/tls/key.pem").read()


def test_certificate(tmp_path):
    target, _ = init(tmp_path, "--bind", "0.0.0.0", "--san", "192.168.1.20", "--san", "gateway.example")
    cert = x509.load_pem_x509_certificate(open(f"{target}/tls/cert.pem", "rb").read())
    key = serialization.load_pem_private_key(open(f"{target}/tls/key.pem", "rb").read(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(key.curve, ec.SECP256R1)
    assert cert.public_key().public_numbers() == key.public_key().public_numbers()
    ca = x509.load_pem_x509_certificate(open(f"{target}/ca.pem", "rb").read())
    cert.verify_directly_issued_by(ca)                          # signed by the installation's CA
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert dt.timedelta(days=365) <= lifetime <= dt.timedelta(days=365, minutes=5)
    now = dt.datetime.now(dt.timezone.utc)
    assert cert.not_valid_before_utc <= now <= cert.not_valid_before_utc + dt.timedelta(hours=1)

    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    dns = san.get_values_for_type(x509.DNSName)
    ips = san.get_values_for_type(x509.IPAddress)
    assert {"localhost", "gateway.example", socket.gethostname().lower()} <= set(dns)
    assert {ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1"),
            ipaddress.ip_address("192.168.1.20")} <= set(ips)
    assert ipaddress.ip_address("0.0.0.0") not in ips

    ski = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    assert ski.digest == x509.SubjectKeyIdentifier.from_public_key(key.public_key()).digest
    assert aki.key_identifier == ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False


def test_bind_address_goes_into_config_url_and_certificate(tmp_path):
    target, out = init(tmp_path, "--bind", "127.0.0.5", "--lan-port", "8444")
    assert parse_fields(out.stdout)["url"] == "https://127.0.0.5:8444/"
    cert = x509.load_pem_x509_certificate(open(f"{target}/tls/cert.pem", "rb").read())
    ips = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.IPAddress)
    assert ipaddress.ip_address("127.0.0.5") in ips
    target, out = init(tmp_path, "--bind", "0.0.0.0", name="any")
    assert parse_fields(out.stdout)["url"] == f"https://{socket.gethostname()}:8443/"


def test_serial_path_is_quoted_safely(tmp_path):
    weird = '/dev/serial/by-id/usb-"Digi"\\XBee\tport'
    target, _ = init(tmp_path, "--serial", weird)
    assert config_schema.load(f"{target}/gateway.toml").han["serial_port"] == weird


def test_init_refuses_existing_installation_unless_forced(tmp_path):
    target, out = init(tmp_path)
    key_before = open(f"{target}/tls/key.pem").read()
    again = run_admin("init", "--dir", target)
    assert again.returncode == 1
    assert "already exists" in again.stderr and "--force" in again.stderr
    assert again.stdout == ""
    assert open(f"{target}/tls/key.pem").read() == key_before
    forced = run_admin("init", "--dir", target, "--force")
    assert forced.returncode == 0, forced.stderr
    assert open(f"{target}/tls/key.pem").read() != key_before
    login = parse_fields(forced.stdout)
    users = users_file.load(f"{target}/users.toml")
    assert list(users) == [login["username"]]


def test_init_into_an_existing_empty_folder_is_fine(tmp_path):
    (tmp_path / "empty").mkdir()
    out = run_admin("init", "--dir", str(tmp_path / "empty"))
    assert out.returncode == 0, out.stderr


@pytest.mark.parametrize("args, needle", [
    (["--bind", "localhost"], "--bind"),
    (["--bind", "300.1.1.1"], "--bind"),
    (["--lan-port", "70000"], "--lan-port"),
    (["--lan-port", "0"], "--lan-port"),
    (["--user", "bad name"], "--user"),
    (["--san", "not a host"], "--san"),
    (["--serial", " "], "--serial"),
])
def test_init_rejects_bad_arguments(tmp_path, args, needle):
    out = run_admin("init", "--dir", str(tmp_path / "gw"), *args)
    assert out.returncode == 1
    assert needle in out.stderr
    assert not (tmp_path / "gw").exists()


def test_init_refuses_a_folder_too_deep_for_the_channel_socket(tmp_path):
    deep = tmp_path / ("d" * 100)
    out = run_admin("init", "--dir", str(deep))
    assert out.returncode == 1
    assert "socket_path" in out.stderr
    assert not deep.exists()


# -- users -------------------------------------------------------------------------------------------------
@pytest.fixture
def installation(tmp_path):
    target, out = init(tmp_path)
    return f"{target}/gateway.toml", parse_fields(out.stdout)


def users_of(config_path):
    return users_file.load(config_schema.load(config_path).lan["users_file"])


def test_user_add_generates_password_and_subscription(installation):
    cfg, first = installation
    out = run_admin("user", "add", "bob", "--config", cfg)
    assert out.returncode == 0, out.stderr
    fields = parse_fields(out.stdout)
    assert [line.split(": ")[0] for line in out.stdout.splitlines()] == ["username", "password", "subscription"]
    assert fields["username"] == "bob"
    bob = users_of(cfg)["bob"]
    assert bob.subscription == fields["subscription"] != first["subscription"]
    assert passwords.verify_password(fields["password"], bob.password_hash)
    assert first["username"] in users_of(cfg)


def test_user_add_with_password_on_stdin_and_given_subscription(installation):
    cfg, _ = installation
    out = run_admin("user", "add", "carol", "--password-stdin", "--subscription", "carol-1", "--config", cfg,
                    input="a long enough secret\n")
    assert out.returncode == 0, out.stderr
    assert "password" not in parse_fields(out.stdout)
    assert parse_fields(out.stdout)["subscription"] == "carol-1"
    carol = users_of(cfg)["carol"]
    assert carol.subscription == "carol-1"
    assert passwords.verify_password("a long enough secret", carol.password_hash)


@pytest.mark.parametrize("stdin, needle", [("short\n", "at least"), ("two\nlines here!\n", "one line"), ("", "at least")])
def test_user_add_rejects_weak_stdin_passwords(installation, stdin, needle):
    cfg, _ = installation
    out = run_admin("user", "add", "dave", "--password-stdin", "--config", cfg, input=stdin)
    assert out.returncode == 1 and needle in out.stderr
    assert "dave" not in users_of(cfg)


@pytest.mark.parametrize("name", ["bad name", "../etc", "-x", "a" * 33, 'qu"ote', "é", "a:b"])
def test_user_add_rejects_bad_names(installation, name):
    cfg, _ = installation
    before = open(config_schema.load(cfg).lan["users_file"]).read()
    out = run_admin("user", "add", "--config", cfg, "--", name)
    assert out.returncode == 1
    assert "invalid user name" in out.stderr
    assert open(config_schema.load(cfg).lan["users_file"]).read() == before


@pytest.mark.parametrize("sub", ["a/b", "../x", "a b", "x" * 65, "a.b", ""])
def test_user_add_rejects_bad_subscriptions(installation, sub):
    cfg, _ = installation
    out = run_admin("user", "add", "erin", "--subscription", sub, "--config", cfg)
    assert out.returncode == 1 and "invalid subscription" in out.stderr
    assert "erin" not in users_of(cfg)


def test_user_add_existing_is_refused(installation):
    cfg, first = installation
    out = run_admin("user", "add", first["username"], "--config", cfg)
    assert out.returncode == 1 and "already exists" in out.stderr
    assert passwords.verify_password(first["password"], users_of(cfg)[first["username"]].password_hash)


def test_user_passwd(installation):
    cfg, first = installation
    name = first["username"]
    out = run_admin("user", "passwd", name, "--config", cfg)
    assert out.returncode == 0, out.stderr
    new = parse_fields(out.stdout)["password"]
    user = users_of(cfg)[name]
    assert passwords.verify_password(new, user.password_hash)
    assert not passwords.verify_password(first["password"], user.password_hash)
    assert user.subscription == first["subscription"]
    out = run_admin("user", "passwd", name, "--password-stdin", "--config", cfg, input="chosen by hand 1\n")
    assert out.returncode == 0 and "password" not in parse_fields(out.stdout)
    assert passwords.verify_password("chosen by hand 1", users_of(cfg)[name].password_hash)
    assert run_admin("user", "passwd", "nobody", "--config", cfg).returncode == 1


def test_user_remove_and_list(installation):
    cfg, first = installation
    assert run_admin("user", "add", "bob", "--subscription", "s-bob", "--config", cfg).returncode == 0
    out = run_admin("user", "list", "--config", cfg)
    assert out.returncode == 0
    assert out.stdout.splitlines() == sorted([f"{first['username']}\t{first['subscription']}", "bob\ts-bob"])
    assert "scrypt" not in out.stdout
    out = run_admin("user", "remove", "bob", "--config", cfg)
    assert out.returncode == 0 and out.stdout.strip() == "removed: bob"
    assert list(users_of(cfg)) == [first["username"]]
    out = run_admin("user", "remove", "bob", "--config", cfg)
    assert out.returncode == 1 and "no user" in out.stderr


def test_users_file_stays_0600_and_no_temp_files(installation):
    cfg, _ = installation
    path = config_schema.load(cfg).lan["users_file"]
    os.chmod(path, 0o644)        # even if someone loosened it, the next write is 0600 again
    proc = subprocess.run(f"umask 000 && {command('openseg-admin')} user add zed --config {cfg}",
                          shell=True, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert mode(path) == 0o600
    leftovers = [n for n in os.listdir(os.path.dirname(path)) if n.endswith(".tmp")]
    assert leftovers == []


def test_concurrent_user_adds_are_not_lost(installation):
    cfg, first = installation
    procs = [subprocess.Popen([command("openseg-admin"), "user", "add", f"u{i}", "--config", cfg],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for i in range(6)]
    for p in procs:
        assert p.wait(timeout=60) == 0, p.stderr.read()
    assert set(users_of(cfg)) == {first["username"]} | {f"u{i}" for i in range(6)}


def test_config_errors_exit_2_and_name_the_key(tmp_path, installation):
    cfg, _ = installation
    text = open(cfg).read().replace("port = 8443", 'port = "eighty"')
    bad = tmp_path / "bad.toml"
    bad.write_text(text)
    out = run_admin("user", "list", "--config", str(bad))
    assert out.returncode == 2 and "[lan] port" in out.stderr
    out = run_admin("user", "list", "--config", str(tmp_path / "missing.toml"))
    assert out.returncode == 2 and "no such config file" in out.stderr


def test_broken_users_file_is_reported_not_overwritten(installation):
    cfg, _ = installation
    path = config_schema.load(cfg).lan["users_file"]
    with open(path, "a") as f:
        f.write("[users.broken\n")
    before = open(path).read()
    out = run_admin("user", "add", "bob", "--config", cfg)
    assert out.returncode == 2 and "not valid TOML" in out.stderr
    assert open(path).read() == before


def test_usage_errors(installation):
    cfg, _ = installation
    assert run_admin().returncode == 2
    assert run_admin("user", "add", "bob").returncode == 2          # --config is required
    assert run_admin("user", "frobnicate", "--config", cfg).returncode == 2


def test_generated_gateway_toml_is_plain_toml_with_the_documented_sections(installation):
    cfg, _ = installation
    data = tomllib.loads(open(cfg).read())
    assert set(data) == {"han", "channel", "lan"}
    assert data["channel"]["socket_path"] == "run/readings.sock"
    assert data["lan"]["users_file"] == "users.toml"


def test_cert_renew_replaces_key_and_certificate_but_not_users(installation):
    cfg, first = installation
    lan = config_schema.load(cfg).lan
    key_before, cert_before = open(lan["private_key"]).read(), open(lan["certificate"]).read()
    users_before = open(lan["users_file"]).read()
    out = run_admin("cert", "renew", "--san", "gw.home.arpa", "--config", cfg)
    assert out.returncode == 0, out.stderr
    fields = parse_fields(out.stdout)
    assert fields["certificate"] == lan["certificate"] and fields["sha256"].count(":") == 31
    assert open(lan["private_key"]).read() != key_before
    assert open(lan["certificate"]).read() != cert_before
    assert open(lan["users_file"]).read() == users_before
    assert mode(lan["private_key"]) == 0o600
    cert = x509.load_pem_x509_certificate(open(lan["certificate"], "rb").read())
    dns = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)
    assert "gw.home.arpa" in dns and "localhost" in dns
    assert run_admin("cert", "renew", "--san", "bad name", "--config", cfg).returncode == 1


def test_rewriting_the_users_file_keeps_its_owner(tmp_path):
    """Run as root on a gateway, openseg-admin must not leave the file unreadable to the LAN user."""
    import os
    import pytest as _pytest
    from openseg.lan_server.accounts import users_file
    if os.getuid() != 0:
        _pytest.skip("changing a file's owner needs root (CI runs as root)")
    path = tmp_path / "users.toml"
    path.write_text("# old\n")
    os.chown(path, 4242, 4343)
    users_file.write_atomic(str(path), "# new\n")
    st = os.stat(path)
    assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (4242, 4343, 0o600)
    assert path.read_text() == "# new\n"


def test_cert_renew_keeps_the_key_and_certificate_owners(installation):
    """Run as root on a gateway (SECURITY.md: key.pem belongs to openseg-lan), `cert renew` must not
    leave a key only root can read: openseg-lan would refuse to start. tests/system/test_system_boot.py
    checks the same with the real users and a real restart."""
    if os.getuid() != 0:
        pytest.skip("changing a file's owner needs root (CI runs as root)")
    cfg, _ = installation
    lan = config_schema.load(cfg).lan
    os.chown(lan["private_key"], 4242, 4343)
    os.chown(lan["certificate"], 0, 4343)
    key_before = open(lan["private_key"]).read()
    assert run_admin("cert", "renew", "--config", cfg).returncode == 0
    assert open(lan["private_key"]).read() != key_before
    st = os.stat(lan["private_key"])
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (4242, 4343, 0o600)
    st = os.stat(lan["certificate"])
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (0, 4343, 0o644)


def test_init_writes_the_installers_production_settings(tmp_path):
    """deploy/install-gateway's init: the socket in /run/openseg, the HAN's uid, the state directory."""
    out = run_admin("init", "--dir", str(tmp_path / "gw"), "--socket-path", "/run/openseg/readings.sock",
                    "--han-uid", "998", "--state-dir", "/var/lib/openseg", "--bind", "0.0.0.0")
    assert out.returncode == 0, out.stderr
    cfg = config_schema.load(str(tmp_path / "gw" / "gateway.toml"))
    assert cfg.channel == {"socket_path": "/run/openseg/readings.sock", "han_uid": 998}
    assert cfg.lan["state_dir"] == "/var/lib/openseg" and cfg.lan["bind"] == "0.0.0.0"
    assert not (tmp_path / "gw" / "run").exists(), "no socket folder of its own beside the config"
