import sys

from xenconsole.cli import main

sys.exit(main())
