"""C{python -m callnet}: the same as the C{callnet} command."""

import sys

from callnet.cli import main

sys.exit(main())
