"""`python -m testbed [setup|base|stack]` (tests/ on the path): the engine and the images."""

import sys

from testbed import main

sys.exit(main())
