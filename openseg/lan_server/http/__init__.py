"""The LAN's HTTP room: the CherryPy application, authentication, TLS, the resources it answers with."""
