"""Scripts the lab runs on its own kernel: stage 1 (initramfs) and stage 2 (its init)."""
