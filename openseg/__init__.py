"""OpenSEG: the gateway's code under one root name (README, "Packaging").

han_reader (the HAN process), lan_server (the LAN process), shared_schema (the one-way channel and
the config both read) and mqtt_bridge (the optional MQTT publisher). Nothing is imported here: each
process imports only its own package and shared_schema (.importlinter).
"""
