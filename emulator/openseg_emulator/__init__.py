"""An emulated Digi XBee SE router radio joined to a ZigBee Smart Energy meter, on a pseudo-terminal.

`openseg-emulator --link PATH` speaks escaped XBee API frames (AP=2) on a pty so that the gateway's real
serial code runs end to end without hardware. Neither gateway process imports this package, and this
package imports nothing from them: it is a second, independent reading of docs/han-protocol.md.

Modules, each with one job:
  api_frames   XBee framing: escaping/checksum for what we send, a resynchronising decoder for what we get
  classify     independent classification of every host frame (at-query / zdo-discovery / zcl-read / not-a-read)
  household    a seeded, piecewise-constant household load profile (pure)
  meter_model  loads, exact energy integration and the meter's raw register values (pure)
  metering     the meter's Simple Metering server: Read Attributes answered, everything else refused (pure)
  network      the ZigBee nodes behind the radio: coordinator and meter, ZDO answers, APS delivery (pure)
  radio        the XBee itself: AT queries, join state, explicit TX routing and TX status (pure)
  faults       seeded drop/corrupt injection on the meter's poll answers
  frame_log    the JSON-lines frame log tests read
  load_file    a load in watts read from a file a test rewrites
  pty_link     the pty, its symlink, host presence, and a UART-paced writer
  main         the command line and the select loop
  devstack     (not part of the emulator proper) emulator + openseg-han + openseg-lan for `make run` and tests
"""
