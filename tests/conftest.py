import os
import sys
from pathlib import Path

# Test helpers (topologies, treebuilder, golden, schema) are plain modules beside the tests.
sys.path.insert(0, str(Path(__file__).parent))

# The lab lane boots an emulated server for several minutes: `make lab-test` runs it on its own.
collect_ignore = [] if os.environ.get("BMSLICE_LAB_TEST") == "1" else ["lab"]
