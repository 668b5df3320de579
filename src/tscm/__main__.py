import sys

from tscm.cli import main

sys.exit(main())
