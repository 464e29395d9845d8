"""bmslice: slice a bare-metal server into pinned VMs with bare-metal performance."""

__version__ = "0.1.0"
