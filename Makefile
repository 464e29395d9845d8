.PHONY: setup test lint lab-test

setup:
	bash scripts/setup-host.sh

test:
	.venv/bin/ruff check src tests && .venv/bin/ruff format --check src tests && .venv/bin/mypy && .venv/bin/pytest

lint:
	.venv/bin/ruff check src tests && .venv/bin/ruff format --check src tests && .venv/bin/mypy

# bmslice on a real kernel: an emulated server with an IOMMU, two NUMA nodes and SR-IOV NICs
# (tests/lab; about 15-25 minutes under TCG). Fetches the lab's packages into its cache once.
lab-test:
	BMSLICE_LAB_TEST=1 .venv/bin/pytest tests/lab -p no:cacheprovider -s -v --tb=short
