"""Local stand-ins for Azure: ARM emulator, token issuer, Azurite, network lab. Not imported by jitbroker."""
