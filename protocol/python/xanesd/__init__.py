"""xanesd's Python side: `xanesd.protocol` encodes and decodes the wire messages
(protocol/PROTOCOL.md), sends ingest messages, and talks to the control and publish sockets
(`Control`, `subscribe`, `recv`). The command-line clients (xanesctl, xanes-view,
xanes-adaptive) import it; deploy/install.sh installs it where Debian's python3 finds it."""
