"""Offline stand-in for the get-pip.py script ansible-test downloads into ~/.ansible/test/cache.

ansible-test creates each sanity-test virtual environment without pip and runs this script
in it (arguments: the pip version it wants, --no-setuptools, --no-wheel) before it installs
the test's pinned requirements. Python's own ensurepip installs the pip wheel that ships with
Python, so nothing is fetched; which pip version does the installs does not matter to the tests.
"""

import subprocess
import sys

sys.exit(subprocess.call([sys.executable, "-m", "ensurepip", "--default-pip"]))
