"""``python -m trainer --config run.json --output-dir DIR`` (the same as ``layersync train``)."""

import sys

from trainer.cli import train_main

if __name__ == "__main__":
    sys.exit(train_main())
