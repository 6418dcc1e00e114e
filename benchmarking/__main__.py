"""``python -m fiftyone_hardness.benchmarking``: the quality grid."""

from fiftyone_hardness.benchmarking.grid import main

if __name__ == "__main__":
    main()
