"""label: forward log returns (raw, target and 3-class) and label end times per horizon.

With label.symbol_batch > 0 the table is computed and written a batch of symbols at a time (row
groups), the same table as in one piece."""
import pandas as pd

from alphafactory import stage
from alphafactory.config import section
from alphafactory.io import write_parquet_pieces
from alphafactory.labels import LabelConfig, iter_labels


def main() -> None:
    args, params = stage.parse(__doc__, "bars", "out")
    cfg = section(params, "label", LabelConfig)
    write_parquet_pieces(iter_labels(pd.read_parquet(args.bars), cfg), args.out)


if __name__ == "__main__":
    stage.run(main)
