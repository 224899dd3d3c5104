"""``python -m proxy.blocklist``: run the blocklist editor (:mod:`proxy.blocklist.edit`)."""

import sys

from .edit import main

if __name__ == "__main__":
    sys.exit(main())
