"""openseg-mqtt's reconnect backoff (openseg/mqtt_bridge/main.py); the process itself is
tests/system/test_mqtt_bridge.py."""
from openseg.mqtt_bridge.main import Backoff


def test_backoff_doubles_to_a_minute_and_starts_over():
    b = Backoff()
    assert [b.next() for _ in range(8)] == [1, 2, 4, 8, 16, 32, 60, 60]
    b.reset()
    assert b.next() == 1
