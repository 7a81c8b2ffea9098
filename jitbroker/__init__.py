"""jit-broker: just-in-time network access to Azure VMs (the broker, run as an Azure Functions app)."""
