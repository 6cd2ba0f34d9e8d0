"""``python -m postvl.filtering`` / ``accelerate launch -m postvl.filtering``: the same as ``postvl filter``."""

import sys

from postvl.filtering.main import main

sys.exit(main())
