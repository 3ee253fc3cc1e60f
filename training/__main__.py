"""`python -m training` is `vae-train`."""

import sys

from training.cli import main

sys.exit(main())
