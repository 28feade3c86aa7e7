"""check_params: the whole of params.yaml checked before any other stage runs: an unknown section
or key, or a bad value anywhere, fails here in one line (see alphafactory.params_check)."""
from alphafactory import stage
from alphafactory.io import write_json
from alphafactory.params_check import check_params


def main() -> None:
    args, params = stage.parse(__doc__, "out")
    enabled = check_params(params)
    stage.log.info("check_params: params.yaml is valid; models enabled: %s", ", ".join(enabled))
    # Constant content: prepare depends on this file only to run after the check, and is not
    # rerun by it (what each stage reads is in its own params deps).
    write_json({"checked": True}, args.out)


if __name__ == "__main__":
    stage.run(main)
