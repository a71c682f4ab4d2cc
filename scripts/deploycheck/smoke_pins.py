"""The smoke step of `make check-deploy`: the clean venv holds exactly worker/requirements.txt.

VENV/bin/python smoke_pins.py worker/requirements.txt
"""

import re
import subprocess
import sys

pins = {
    re.sub(r"[-_.]+", "-", line.split("==")[0]).lower(): line.split("==")[1].strip()
    for line in open(sys.argv[1])
    if re.match(r"^[A-Za-z0-9]", line)
}
frozen = subprocess.run(
    [sys.executable, "-m", "pip", "freeze", "--all"], capture_output=True, text=True, check=True
).stdout.split()
have = {
    re.sub(r"[-_.]+", "-", line.split("==")[0]).lower(): line.split("==")[1]
    for line in frozen
    if "==" in line
}
have = {
    k: v for k, v in have.items() if k not in {"pip", "setuptools", "wheel", "careershaper-jobs"}
}
if have != pins:
    extra = sorted(set(have.items()) - set(pins.items()))
    missing = sorted(set(pins.items()) - set(have.items()))
    sys.exit(
        f"the clean venv is not exactly worker/requirements.txt: extra {extra}, missing {missing}"
    )
