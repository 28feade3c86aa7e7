"""A bundle is untrusted input (pulled from a remote, mailed, unpacked): ``load_bundle`` reads only
the files its manifest lists and it verified, never follows a path or a link out of the bundle,
and turns a file its library cannot read into one error naming the file (``alphafactory
predict``: one ``error:`` line, exit 2), never a traceback.

Each crafted bundle is a copy of the session pipeline's bundle with one file edited and its
manifest re-hashed: "hashed but malicious", which the hashes alone cannot catch."""
from __future__ import annotations

import json
import os
import pickle
import re
import shutil
import subprocess
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from alphafactory import cli, models
from alphafactory.errors import ArtifactError, BundleError
from alphafactory.models.base import XY
from alphafactory.serving.bundle import VerifiedBundle, file_table, verify
from alphafactory.serving.inference import load_bundle
from pipeline_utils import BIN

pytestmark = pytest.mark.slow
DEEP = 200_000  # JSON nesting depth: json.loads raises RecursionError


def _edit_json(path: Path, change: Callable[[dict], None]) -> None:
    obj = json.loads(path.read_text())
    change(obj)
    path.write_text(json.dumps(obj))


def _rehash(b: Path) -> None:
    """Make the manifest match the files as they are now (a link's target is what is hashed)."""
    _edit_json(b / "manifest.json", lambda m: m.update(files=file_table(b)))


@pytest.fixture
def crafted(project, tmp_path) -> Callable[[Callable[[Path, Path], None]], Path]:
    """crafted(edit): a copy of the pipeline's bundle at tmp/bundle, ``edit(bundle, outside)``
    applied, its manifest re-hashed. ``outside`` (tmp/outside) holds copies of the bundle's model
    dirs and blender: real, loadable files that are not part of the bundle."""
    repo, _ = project
    outside = tmp_path / "outside"
    shutil.copytree(repo / "bundle", outside)

    def make(edit: Callable[[Path, Path], None]) -> Path:
        b = tmp_path / "bundle"
        shutil.rmtree(b, ignore_errors=True)
        shutil.copytree(repo / "bundle", b)
        edit(b, outside)
        _rehash(b)
        return b

    return make


def _model_path(name: str, value: Callable[[Path], str]) -> Callable[[Path, Path], None]:
    def edit(b: Path, outside: Path) -> None:
        def change(cfg: dict) -> None:
            spec = next(m for m in cfg["models"] if m["name"] == name)
            spec["path"] = value(outside)
        _edit_json(b / "bundle.json", change)
    return edit


def _state_file(model: str, key: str, value: Callable[[Path], str]) -> Callable[[Path, Path], None]:
    def edit(b: Path, outside: Path) -> None:
        def change(man: dict) -> None:
            if key == "files":
                man["state"]["files"][0] = value(outside)
            else:
                man["state"][key] = value(outside)
        _edit_json(b / "models" / model / "manifest.json", change)
    return edit


def _onnx_file(value: Callable[[Path], str]) -> Callable[[Path, Path], None]:
    def edit(b: Path, outside: Path) -> None:
        _edit_json(b / "models/lstm/onnx.json", lambda info: info.update(file=value(outside)))
    return edit


def _blender_path(value: Callable[[Path], str]) -> Callable[[Path, Path], None]:
    def edit(b: Path, outside: Path) -> None:
        _edit_json(b / "bundle.json", lambda cfg: cfg["blender"].update(path=value(outside)))
    return edit


ESCAPES = {
    # bundle.json models[].path: a whole model directory elsewhere
    "model_dir_absolute": _model_path("lightgbm", lambda o: str(o / "models/lightgbm")),
    "model_dir_dotdot": _model_path("lightgbm", lambda o: "../outside/models/lightgbm"),
    # a model manifest's state.files[]: one booster elsewhere
    "booster_absolute": _state_file("lightgbm", "files", lambda o: str(o / "models/lightgbm/h1.txt")),
    "booster_dotdot": _state_file("lightgbm", "files", lambda o: "../../../outside/models/lightgbm/h1.txt"),
    # a bundle model's file that lives in another model's directory of the same bundle
    "booster_sibling": _state_file("random_forest", "files", lambda o: "../lightgbm/h1.txt"),
    # onnx.json file: an ONNX graph elsewhere
    "onnx_absolute": _onnx_file(lambda o: str(o / "models/lstm/net.onnx")),
    "onnx_dotdot": _onnx_file(lambda o: "../../../outside/models/lstm/net.onnx"),
    # any file of the machine
    "etc_passwd": _state_file("ridge", "file", lambda o: "/etc/passwd"),
    "etc_passwd_dotdot": _state_file("ridge", "file", lambda o: "../" * 40 + "etc/passwd"),
    # bundle.json blender.path
    "blender_absolute": _blender_path(lambda o: str(o / "blend")),
    "blender_dotdot": _blender_path(lambda o: "../outside/blend"),
}


@pytest.mark.parametrize("case", list(ESCAPES))
def test_paths_in_verified_files_never_leave_the_bundle(crafted, case):
    """Every path a verified file names (bundle.json models[].path and blender.path, a model
    manifest's state files, onnx.json file) must name a file of the bundle: before, each of these
    loaded (and forecast from) the file outside, or opened /etc/passwd."""
    b = crafted(ESCAPES[case])
    with pytest.raises(BundleError, match=r"file path '.*' points outside the directory"):
        load_bundle(b)


def _link_file(b: Path, outside: Path) -> None:
    target = b / "models/lightgbm/h1.txt"
    target.unlink()
    target.symlink_to(outside / "models/lightgbm/h1.txt")  # same bytes: its hash matches


def _link_dir(b: Path, outside: Path) -> None:
    shutil.rmtree(b / "models/lightgbm")
    (b / "models/lightgbm").symlink_to(outside / "models/lightgbm", target_is_directory=True)


def _link_manifest(b: Path, outside: Path) -> None:
    (b / "models/ridge/manifest.json").unlink()
    (b / "models/ridge/manifest.json").symlink_to(outside / "models/ridge/manifest.json")


@pytest.mark.parametrize("edit,where", [(_link_file, "models/lightgbm/h1.txt"), (_link_dir, "models/lightgbm"),
                                        (_link_manifest, "models/ridge/manifest.json")])
def test_a_bundle_holds_no_symbolic_links(crafted, edit, where):
    """A link inside the bundle is refused even when its target hashes as the manifest says:
    the hash would vouch for a file that can change outside the bundle."""
    b = crafted(edit)
    with pytest.raises(BundleError, match=rf"bundle/{where}: a symbolic link \(to '.*outside.*'\)"):
        load_bundle(b)


def test_a_bundle_reached_through_a_link_loads(project, tmp_path):
    """The bundle directory itself may be a link (a mounted or shared models directory)."""
    repo, _ = project
    (tmp_path / "linked").symlink_to(repo / "bundle", target_is_directory=True)
    assert list(load_bundle(tmp_path / "linked").models) == list(load_bundle(repo / "bundle").models)


def test_verified_bundle_hands_out_only_the_files_it_verified(project, tmp_path):
    repo, _ = project
    b = tmp_path / "b"
    shutil.copytree(repo / "bundle", b)
    files = verify(b)
    assert isinstance(files, VerifiedBundle) and files.config["horizons"] == [1, 5, 20]
    assert files.path("models/lightgbm/h1.txt") == (b / "models/lightgbm/h1.txt").resolve()
    assert files.sub("models/lightgbm").path("h1.txt") == files.path("models/lightgbm/h1.txt")
    assert files.sub("models").sub("ridge").read_json("manifest.json")["model"] == "ridge"
    with pytest.raises(BundleError, match=r"b/manifest.json: not a file of the bundle \(not listed"):
        files.path("manifest.json")  # the one file it read but did not hash
    (b / "models/lightgbm/late.txt").write_text("written after verify")
    with pytest.raises(BundleError, match=r"models/lightgbm/late.txt: not a file of the bundle"):
        files.sub("models/lightgbm").path("late.txt")
    for bad in ("../b/bundle.json", "/etc/passwd", "models/./ridge", "models//ridge", "", "a\\b"):
        with pytest.raises(BundleError, match="points outside the directory"):
            files.path(bad)


def _garbage(rel: str, data: bytes = b"\x00not a model file\x00" * 64) -> Callable[[Path, Path], None]:
    def edit(b: Path, outside: Path) -> None:
        (b / rel).write_bytes(data)
    return edit


def _deep(rel: str) -> Callable[[Path, Path], None]:
    return _garbage(rel, b"[" * DEEP + b"]" * DEEP)


def _rename_model(b: Path, outside: Path) -> None:
    """bundle.json calls lightgbm 'lgbm'; the blender still stacks 'lightgbm'."""
    _edit_json(b / "bundle.json", lambda cfg: cfg["models"][0].update(name="lgbm"))


def _rename_member(b: Path, outside: Path) -> None:
    """The blender stacks 'gbm' where bundle.json and the models say 'lightgbm'."""
    _edit_json(b / "blend/manifest.json", lambda m: m["members"].__setitem__(0, "gbm"))
    _edit_json(b / "bundle.json", lambda cfg: cfg["blender"]["members"].__setitem__(0, "gbm"))


def _swap_members(b: Path, outside: Path) -> None:
    """bundle.json lists the blender's members in another order than the blender's weights."""
    _edit_json(b / "bundle.json", lambda cfg: cfg["blender"]["members"].reverse())


def _wrong_manifest_model(b: Path, outside: Path) -> None:
    """models/ridge/manifest.json says it is a random_forest: the directory bundle.json names
    for 'ridge' does not hold ridge."""
    shutil.rmtree(b / "models/ridge")
    shutil.copytree(b / "models/random_forest", b / "models/ridge")


def _onnx_external_data(b: Path, outside: Path) -> None:
    """net.onnx keeps its largest weight in "external data": a file of the bundle's other model
    (ONNX Runtime refuses a location outside the graph's directory)."""
    import onnx
    from onnx import external_data_helper

    graph = onnx.load(b / "models/lstm/net.onnx")
    init = max(graph.graph.initializer, key=lambda t: len(t.raw_data))
    external_data_helper.set_external_data(init, location="../tcn/weights.pt", offset=0, length=len(init.raw_data))
    init.ClearField("raw_data")
    init.data_location = onnx.TensorProto.EXTERNAL
    onnx.save(graph, b / "models/lstm/net.onnx")


def _models_dict(b: Path, outside: Path) -> None:
    _edit_json(b / "bundle.json", lambda cfg: cfg.update(models={m["name"]: m["path"] for m in cfg["models"]}))


UNREADABLE = {
    "lightgbm": (_garbage("models/lightgbm/h1.txt"), r"models/lightgbm/h1.txt: cannot read this lightgbm model "
                                                     r"file \(LightGBMError: "),
    "catboost": (_garbage("models/catboost/h5.cbm"), r"models/catboost/h5.cbm: cannot read this catboost model "
                                                     r"file \(CatBoostError: "),
    "xgboost": (_garbage("models/xgboost/h20.ubj"), r"models/xgboost/h20.ubj: cannot read this xgboost model "
                                                    r"file \(XGBoostError: "),
    "onnx": (_garbage("models/tcn/net.onnx"), r"models/tcn/net.onnx: cannot read this ONNX graph \("),
    "ridge_json": (_garbage("models/ridge/ridge.json"), r"models/ridge/ridge.json: cannot read this JSON file "
                                                        r"\(JSONDecodeError: "),
    "deep_bundle_json": (_deep("bundle.json"), r"bundle/bundle.json: cannot read this JSON file \(RecursionError: "),
    "deep_model_manifest": (_deep("models/xgboost/manifest.json"), r"models/xgboost/manifest.json: cannot read "
                                                                   r"this JSON file \(RecursionError: "),
    "deep_onnx_json": (_deep("models/lstm/onnx.json"), r"models/lstm/onnx.json: cannot read this JSON file "
                                                       r"\(RecursionError: "),
    "onnx_external_data": (_onnx_external_data, r"models/lstm/net.onnx: cannot read this ONNX graph \(Fail: .*External "
                                                 r"data path escapes model directory"),
    "models_not_a_list": (_models_dict, r"bundle/bundle.json: 'models' is .*; expected a JSON list"),
    "renamed_model": (_rename_model, r"models/lightgbm/manifest.json: model 'lightgbm', but .*bundle.json names "
                                     r"it 'lgbm'"),
    "renamed_member": (_rename_member, r"blend/manifest.json: blender members \['gbm'\] are not base models"),
    "swapped_members": (_swap_members, r"blend/manifest.json: blender members \['lightgbm', .*\], but .*bundle.json "
                                       r"lists \['random_forest', "),
    "wrong_model_dir": (_wrong_manifest_model, r"models/ridge/manifest.json: model 'random_forest', but "
                                               r".*bundle.json names it 'ridge'"),
}


@pytest.mark.parametrize("case", list(UNREADABLE))
def test_a_hashed_but_unreadable_bundle_is_one_error_naming_the_file(crafted, capsys, case):
    """Python: a BundleError naming the file. `alphafactory predict`: exit status 2 and one
    `error:` line naming it (before, a LightGBMError, CatBoostError, XGBoostError, ONNX Runtime
    error, RecursionError or KeyError traceback, or a bundle that loaded with models the blender
    does not stack)."""
    edit, message = UNREADABLE[case]
    b = crafted(edit)
    with pytest.raises(BundleError, match=message):
        load_bundle(b)
    capsys.readouterr()
    rc = cli.main(["predict", "--bars", "unused.csv", "--models", str(b), "--out", "unused.parquet"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and err.startswith("error: "), err[:2000]
    assert re.search(message, err), err


def test_cli_on_a_crafted_bundle_prints_one_line_and_exits_2(crafted, project):
    """The installed command, in its own process: no traceback."""
    repo, _ = project
    b = crafted(_garbage("models/catboost/h1.cbm"))
    p = subprocess.run([str(BIN / "alphafactory"), "predict", "--bars", str(repo / "data/prepared/bars.parquet"),
                        "--models", str(b), "--out", str(b.parent / "p.parquet")], capture_output=True, text=True)
    assert p.returncode == 2, p.stderr[-3000:]
    assert p.stderr.startswith("error: ") and p.stderr.count("\n") == 1, p.stderr[-3000:]
    assert "models/catboost/h1.cbm: cannot read this catboost model file (CatBoostError:" in p.stderr
    assert not (b.parent / "p.parquet").exists()


def test_unpicklable_weights_and_arrays_name_the_file(project, tmp_path):
    """A model directory outside a bundle (the explain stage loads them): torch weights that
    the weights-only unpickler refuses (UnpicklingError) and a truncated .npz (BadZipFile) are
    an ArtifactError (a bad-input error: one line from a stage) naming the file."""
    repo, _ = project
    lstm = tmp_path / "lstm"
    shutil.copytree(repo / "models/neural/lstm", lstm)
    (lstm / "weights.pt").write_bytes(pickle.dumps(os.system, protocol=2))  # a global the weights-only loader refuses
    with pytest.raises(ArtifactError, match=r"lstm/weights.pt: cannot read this weights file \(UnpicklingError: "):
        models.load(lstm)
    rng = np.random.default_rng(0)
    X, Y = rng.normal(size=(120, 4)).astype(np.float32), rng.normal(size=(120, 2)).astype(np.float32)
    svm = models.create("svm", {"kind": "rbf", "max_rows": 50}, horizons=(1, 2)).fit(XY(X[:80], Y[:80]), XY(X[80:], Y[80:]))
    models.save(svm, tmp_path / "svm")
    f = tmp_path / "svm/h2.npz"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    with pytest.raises(ArtifactError, match=r"svm/h2.npz: cannot read this svm model file \(BadZipFile: "):
        models.load(tmp_path / "svm")
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with zipfile.ZipFile(f, "w") as zf:  # an object array: loading it would unpickle
        zf.write(tmp_path / "obj.npy", "support_vectors.npy")
    with pytest.raises(ArtifactError, match=r"svm/h2.npz: cannot read this svm model file \(ValueError: "
                                            r"Object arrays cannot be loaded when allow_pickle=False"):
        models.load(tmp_path / "svm")


def test_the_bundle_stage_output_still_loads_and_lists_every_file(project):
    """The checks refuse none of what the bundle stage writes."""
    repo, _ = project
    files = verify(repo / "bundle")
    on_disk = {p.relative_to(repo / "bundle").as_posix() for p in (repo / "bundle").rglob("*") if p.is_file()}
    assert files.files == on_disk - {"manifest.json"}
    b = load_bundle(repo / "bundle")
    assert b.digest == files.digest and len(b.digest) == 64


def test_a_per_symbol_model_dir_cannot_point_outside(tmp_path):
    """The symbol -> subdirectory map of a per-symbol model goes through the same checks, in a
    bundle or not (the explain stage loads model dirs too)."""
    d = tmp_path / "lightgbm"
    d.mkdir()
    (d / "manifest.json").write_text(json.dumps({
        "format_version": 1, "scope": "per_symbol", "model": "lightgbm", "family": "boosting",
        "input_kind": "tabular", "horizons": [1], "task": "regression", "init": {}, "meta": {},
        "symbols": {"AAPL": "../../elsewhere/0000"}}))
    with pytest.raises(ArtifactError, match=r"lightgbm: file path '../../elsewhere/0000' points outside the directory"):
        models.load(d)
