"""``python -m trainer --config run.json --output-dir DIR`` (the same as ``layersync train``);
``python -m trainer probe ...`` maps the blocks (the same as ``layersync probe``)."""

import sys

from trainer.cli import probe_main, train_main

if __name__ == "__main__":
    sys.exit(probe_main(sys.argv[2:]) if sys.argv[1:2] == ["probe"] else train_main())
