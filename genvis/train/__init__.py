"""The generic trainer: state, optimizer, mesh and sharding, steps, checkpoints, logging."""
