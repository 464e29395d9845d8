"""The lab: an emulated server (IOMMU, NUMA, SR-IOV NICs) where bmslice runs on a real kernel."""
