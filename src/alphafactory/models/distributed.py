"""Distributed training of the pooled gradient-boosting families on a Dask cluster
(``boosting.<lightgbm|xgboost>.distributed: true``; the cluster is the ``compute`` section's).

The training rows are split over the cluster's workers as a Dask array, one chunk per worker,
and each library's own Dask interface trains one booster on all of them (``lightgbm.dask``:
data-parallel trees over LightGBM's socket network; ``xgboost.dask``: XGBoost's collective). The
booster that comes back is the library's native one, saved as the single-machine one is
(LightGBM text, XGBoost UBJSON), so bundles, serving and exports do not change.

* **Rows per worker**: row ``i`` of the training rows goes to chunk ``i % n_workers`` (rows are
  interleaved, not cut in blocks), so every worker's share spans every symbol and date: LightGBM
  builds each feature's histogram bins from one worker's sample, and a block of one symbol would
  bin them on that symbol alone. Chunk ``j`` is placed on the ``j``-th worker by address
  (:func:`interleaved`).
* **Early stopping on val, as on one machine.** XGBoost sums its metrics over the workers, so
  ``xgboost.dask.train(early_stopping_rounds=...)`` stops where one machine would. LightGBM 4.7's
  Dask interface scores each worker's validation rows alone, so the workers disagree on when to
  stop and the first to stop leaves the others hanging (LightGBM issues #6351, #7009; a fix, PR
  #7290, is not released). Here every worker is given the *whole* val segment (:class:`_WholeVal`,
  a callback that adds it to the booster on each worker): the workers' trees are identical in
  data-parallel training, so each scores the same booster on the same rows, gets the same val
  loss at every round, and all stop together, at the round ``lgb.early_stopping`` would pick.
  The val rows travel to every worker (they are ``cv.val_frac``-sized, not the bulk of the data).
* **Not byte-identical to one machine, nor across cluster sizes**: bins are found on each
  worker's sample and bagging draws per worker, so the forecasts are close to, not equal to, the
  single-machine ones (tests/test_compute.py reports the IC difference), and they depend on the
  number of workers. XGBoost gives the same booster on a rerun on the same workers. LightGBM
  does not, bit for bit: ``lightgbm.dask`` ranks the machines in the order the scheduler reports
  where the chunks live, which varies between runs, and a machine's rank decides which features
  it finds the bins of, on its own rows; two runs differ about as much as a run differs from one
  machine (the test checks the IC within 0.02). So a rerun of ``train@boosting`` with LightGBM
  distributed writes other bytes, and reruns the stages after it.
"""
from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from alphafactory.errors import ConfigError


def need_client(client: Any, key: str) -> Any:
    """``client``, or the one-line error a user sees for ``<key>.distributed: true`` without a cluster."""
    if client is None:
        raise ConfigError(f"{key}.distributed: true trains on a Dask cluster, but compute.cluster is null; "
                          "expected compute.cluster: local (a LocalCluster of compute.workers processes) or a "
                          "scheduler address such as 'tcp://10.0.0.5:8786', or distributed: false")
    return client


def interleaved(client: Any, X: np.ndarray, y: np.ndarray) -> tuple[Any, Any]:
    """(X, y) as Dask arrays of one chunk per worker, row ``i`` in chunk ``i % n_workers``, chunk
    ``j`` placed on the ``j``-th worker (by address). X: (n, F) float32, y: (n,).

    The placement is explicit so that each worker holds one chunk (a worker holding two would be
    one machine fewer), the same rows on every run."""
    import dask.array as da

    workers = sorted(client.scheduler_info(n_workers=-1)["workers"])
    n = max(1, min(len(workers), len(y)))
    which = np.arange(len(y)) % n
    xs, ys = [], []
    for j in range(n):
        rows = np.flatnonzero(which == j)
        # hash=False: two chunks with equal bytes stay two pieces of data, each on its worker
        fx, fy = client.scatter([np.ascontiguousarray(X[rows]), np.ascontiguousarray(y[rows])],
                                workers=workers[j:j + 1] or None, hash=False)
        xs.append(da.from_delayed(fx, shape=(len(rows), X.shape[1]), dtype=X.dtype))
        ys.append(da.from_delayed(fy, shape=(len(rows),), dtype=y.dtype))
    return da.concatenate(xs), da.concatenate(ys)


class _WholeVal:
    """LightGBM callback run on every worker before the first round: adds the whole val segment
    to the worker's booster as its validation set, so that LightGBM scores it after every round
    and ``lgb.early_stopping`` stops on it, on every worker at the same round (see the module
    docstring)."""

    before_iteration = True
    order = 0

    def __init__(self, Xv: np.ndarray, yv: np.ndarray) -> None:
        self.Xv, self.yv = Xv, yv

    def __call__(self, env: Any) -> None:
        import lightgbm as lgb

        if env.iteration == env.begin_iteration:
            with warnings.catch_warnings():  # "Overriding the parameters from Reference Dataset": meant so
                warnings.simplefilter("ignore", UserWarning)
                env.model.add_valid(lgb.Dataset(self.Xv, self.yv, reference=env.model.train_set), "val")


def train_lightgbm(client: Any, params: dict, X: np.ndarray, y: np.ndarray, Xv: np.ndarray, yv: np.ndarray,
                   rounds: int, early_stopping_rounds: int, classifier: bool) -> tuple[Any, dict[str, list[float]]]:
    """One LightGBM booster trained with ``lightgbm.dask`` over the cluster's workers, early-stopped on
    the whole val segment. Returns (booster, {"val": curve}): the train loss of a distributed fit is
    each worker's own, so none is recorded. ``params``: the scikit-learn names of
    ``DaskLGBMRegressor`` (``num_threads`` is each worker's thread count: lightgbm.dask sets it)."""
    import lightgbm as lgb

    Xd, yd = interleaved(client, X, y)
    cls = lgb.DaskLGBMClassifier if classifier else lgb.DaskLGBMRegressor
    metric = "multi_logloss" if classifier else "l2"
    model = cls(client=client, n_estimators=rounds, **params, deterministic=True, force_row_wise=True,
                verbosity=-1, metric=metric, tree_learner="data")
    # as_current: lightgbm.dask waits on its futures through the default client, and the stage's
    # client is not made the default (compute.fan_out), so another one could be waited on forever
    with client.as_current(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Parameter n_jobs will be ignored", UserWarning)  # each worker's threads
        model.fit(Xd, yd, callbacks=[_WholeVal(Xv, yv), lgb.early_stopping(early_stopping_rounds, verbose=False)])
    # the val curve of the worker that returned the model (every worker's is the same)
    return model.booster_, {"val": [float(v) for v in model.evals_result_["val"][metric]]}


def train_xgboost(client: Any, params: dict, X: np.ndarray, y: np.ndarray, Xv: np.ndarray, yv: np.ndarray,
                  rounds: int, early_stopping_rounds: int) -> tuple[Any, dict[str, dict[str, list[float]]]]:
    """One XGBoost booster trained with ``xgboost.dask.train`` over the cluster's workers, the train
    and val segments both split over them (XGBoost sums the metrics over workers), early-stopped
    on val. Returns (booster, the library's evals log ``{"train"|"val": {metric: curve}}``)."""
    from xgboost import dask as dxgb

    Xd, yd = interleaved(client, X, y)
    Xvd, yvd = interleaved(client, Xv, yv)
    params = {k: v for k, v in params.items() if k != "nthread"}  # each worker's own thread count
    with client.as_current():
        dtrain, dval = dxgb.DaskDMatrix(client, Xd, yd), dxgb.DaskDMatrix(client, Xvd, yvd)
        out = dxgb.train(client, params, dtrain, num_boost_round=rounds, evals=[(dtrain, "train"), (dval, "val")],
                         early_stopping_rounds=early_stopping_rounds, verbose_eval=False)
    return out["booster"], out["history"]
