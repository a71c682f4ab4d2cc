"""Lay out a built function (`NAME.func`) with the files its .vc-config.json maps in, as the runtime
sees it.

    python vercel_copy_function.py APP_DIR NAME DEST
"""

import json
import shutil
import sys
from pathlib import Path

app, name, dest = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
func = app / ".vercel/output/functions" / f"{name}.func"
shutil.rmtree(dest, ignore_errors=True)
shutil.copytree(func, dest)
for rel, origin in json.loads((func / ".vc-config.json").read_text())["filePathMap"].items():
    (dest / rel).parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(app / origin, dest / rel)
