"""The fault-injection suite: the faults a site meets, injected into the agent as a process."""
