"""``python -m emoset_peft ...`` is the same as the ``emoset-peft`` console script."""

import sys

from emoset_peft.cli import main

if __name__ == "__main__":
    sys.exit(main())
