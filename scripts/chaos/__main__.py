"""`python -m scripts.chaos`: see scripts/chaos/run.py."""

import sys

from scripts.chaos.run import main

sys.exit(main())
