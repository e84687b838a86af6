"""OpenSEG LAN process: serves the meter's readings over HTTPS (ESPI Atom, JSON, the in-home page)."""
