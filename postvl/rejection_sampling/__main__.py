"""``accelerate launch -m postvl.rejection_sampling IN --out OUT --model M``: see postvl.rejection_sampling.main."""

import sys

from postvl.rejection_sampling.main import main

sys.exit(main())
