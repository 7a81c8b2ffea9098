"""Local stand-ins for Azure: ARM emulator, token issuer, Azurite runner, network lab. Never imported by jitbroker."""
