"""The LAN's ESPI room: Green Button documents built from plain data; scaling, local time, interval energy."""
