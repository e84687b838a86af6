"""The LAN's accounts room: users, password hashes, the installation's CA and certificates, openseg-admin."""
