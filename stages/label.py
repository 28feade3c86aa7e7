"""label: forward log returns (raw, target and 3-class) and label end times per horizon."""
import pandas as pd

from alphafactory import stage
from alphafactory.config import section
from alphafactory.io import write_parquet
from alphafactory.labels import LabelConfig, make_labels


def main() -> None:
    args, params = stage.parse(__doc__, "bars", "out")
    cfg = section(params, "label", LabelConfig)
    write_parquet(make_labels(pd.read_parquet(args.bars), cfg), args.out)


if __name__ == "__main__":
    stage.run(main)
