"""The only code both the HAN and LAN processes import: channel messages and the config file."""
