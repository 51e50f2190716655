import sys

from hpcgen.cli import main

sys.exit(main())
