// Placeholder until the simulator lands (helper overwrites this file).
