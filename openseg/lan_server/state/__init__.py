"""The LAN's state room: what the channel delivers (readings) and what the disk keeps (history)."""
