"""Checkpointing containers with CRIU: whether CRIU works on this node (:mod:`.criu`) and the checkpoint
archive's layout (:mod:`.archive`). CheckpointContainer itself is :mod:`moorage.runtime.containers.checkpoint.dump`."""
