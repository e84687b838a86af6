"""openseg-mqtt: an optional LAN client of the gateway that publishes its readings to an MQTT broker with
Home Assistant discovery. It only reads the gateway's HTTPS JSON, like any other LAN client, so it has
no path to the radio or the channel, and a broker that is down cannot affect polling."""
