"""The execution layer: configuration, sweeps, units of work and the back-ends that run them."""
