"""OpenSEG HAN process: reads a ZigBee Smart Energy meter through an XBee SE radio, read-only."""
