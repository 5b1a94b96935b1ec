"""SoftmaxClassifier: this tool's softmax regression behind scikit-learn's estimator interface.

A multinomial (softmax) linear classifier trained by minibatch SGD, or by full-batch L-BFGS
to the exact optimum (solver="lbfgs", which needs pip install 'softmax-cls[lbfgs]'), through
the very fit() the CLI uses (softmax_cls.training.fit.fit): the same loss, the same engines,
the same preprocessing folded into the weights. Needs the optional extra:
pip install 'softmax-cls[sklearn]'.
"""

from __future__ import annotations

import math
import numbers
import warnings

import numpy as np

try:
    from sklearn.base import BaseEstimator, ClassifierMixin
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.utils import check_random_state
    from sklearn.utils.class_weight import compute_class_weight
    from sklearn.utils.multiclass import check_classification_targets
    from sklearn.utils.validation import _check_sample_weight, check_is_fitted, validate_data
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError("softmax_cls.estimator needs scikit-learn: "
                      "pip install 'softmax-cls[sklearn]'") from exc

from .config import Config, config_from_dict
from .engines import numpy_engine
from .engines.contract import StepRule, TrainingRows
from .errors import ConfigError, DeviceOutOfMemory
from .math.optim import learning_rate
from .math.preprocess import MIN_STD, Preprocessor, Split, pixel_mean_std, split_train_val
from .math.softmax import PREDICT_CHUNK
from .text import counted, shorten
from .training.fit import TrainingDiverged, TrainState, fit, initial_state

AUTO_MIN_STEPS = 1000  # epochs="auto": enough epochs for this many SGD steps, at least 5
AUTO_MIN_EPOCHS = 5
# The full-batch gradient at the model, as a fraction of the one at W = 0, above which a fit
# warns that it ended far from the optimum (digits: 5 epochs 0.61, 0.854 accuracy; 200
# epochs 0.026, 0.961; LogisticRegression 0.972).
FAR_FROM_OPTIMUM = 0.05

# X as training takes it: float32, or float16 as it is (the engines convert each minibatch,
# exactly); other dtypes are converted to float32
_TRAINING_DTYPES = [np.float32, np.float16]

# config key -> estimator parameter, so that a config error names the parameter
_PARAMETER_OF_KEY = {
    "seed": "random_state", "engine": "engine", "device": "device", "loss.reg": "reg",
    "optim.epochs": "epochs",
    "optim.batch_size": "batch_size", "optim.lr": "lr", "optim.momentum": "momentum",
    "optim.nesterov": "nesterov", "optim.schedule.name": "schedule",
    "optim.early_stopping.patience": "patience", "preprocess.center": "standardize",
    "optim.solver": "solver", "optim.tol": "tol", "optim.max_iter": "max_iter",
    "optim.precondition": "precondition",
}
# Parameters that take numbers: a string there ("1e-3") is refused, as scikit-learn's
# estimators refuse it, though the config (YAML's text) takes numeric strings
_NUMBER_PARAMETERS = ("lr", "reg", "batch_size", "momentum", "patience", "tol", "max_iter")


class SoftmaxClassifier(ClassifierMixin, BaseEstimator):
    """Multinomial logistic (softmax) regression trained by minibatch SGD with momentum, or
    solved exactly by full-batch L-BFGS (solver="lbfgs").

    Always multinomial, for any number of classes from 2 and any labels (ints, strings).
    Training computes in float32 (float64 and integer X are converted; float16 X is used as
    it is, converted a minibatch at a time, with the weights of its float32 conversion);
    fitted coefficients and every prediction are float64. Each fit goes through
    softmax_cls.training.fit.fit with a Config built from these parameters, so the CLI, the
    sweep and this estimator share one loss and one SGD step.

    Parameters
    ----------
    solver : "sgd" or "lbfgs" (optim.solver). "lbfgs" minimises the same objective exactly
        (SciPy's L-BFGS-B, docs/lbfgs.md) from zero weights, or from the current model with
        warm_start; lr, epochs, batch_size, momentum, nesterov and schedule are then unused
        and early_stopping is refused. With standardize=False it is LogisticRegression(
        solver="lbfgs", C=1 / (2 * reg * n_samples)) on the same rows.
    tol : float > 0, solver="lbfgs" stops when the gradient's max-norm is at most tol
        (optim.tol; scikit-learn's gtol).
    max_iter : int >= 1, solver="lbfgs" stops after this many iterations, with a
        ConvergenceWarning (optim.max_iter).
    precondition : bool, solver="lbfgs" iterates on variables whitened by the rows' second
        moment (optim.precondition): the same optimum and tol, far fewer iterations on
        correlated features; False runs LogisticRegression's plain iteration.
    lr : float, learning rate of the first epoch (optim.lr).
    reg : float, L2 strength: the loss adds reg * sum(W ** 2) over the coefficients (not the
        intercepts; loss.reg). Note: sklearn's SGDClassifier `alpha` is 2 * reg.
    epochs : int or "auto", passes over the training rows (optim.epochs). "auto": enough for
        AUTO_MIN_STEPS (1,000) SGD steps, at least 5 epochs: 6 on CIFAR-10's 50,000 training
        images, 200 on the 1,257 rows of a 70% split of scikit-learn's digits, where 5 epochs
        are 25 steps and stop far from the optimum.
    batch_size : int, rows per SGD step (optim.batch_size).
    momentum : float in [0, 1), nesterov : bool, the SGD step (optim.momentum, optim.nesterov).
    schedule : "cosine", "constant", "exponential" or "step", the learning-rate schedule over
        `epochs` (optim.schedule.name, with the config's gamma 0.9 and step size 5).
    early_stopping : bool, hold out round(validation_fraction * n_samples) rows (a seeded,
        stratified split), stop after `patience` epochs without a better validation
        accuracy, and keep the weights of the best validation epoch.
    validation_fraction : float in (0, 1), patience : int >= 1, see early_stopping.
    standardize : bool, centre each feature and divide it by its standard deviation over the
        training rows (preprocess center true, scale std). The statistics are folded into
        coef_ and intercept_, which act on the original features.
    class_weight : dict {label: weight}, "balanced" or None, multiplied into sample_weight.
        A row weight below 0 (from either) is a ValueError: it would reward misclassifying
        its row, the objective has no minimum but where the loss clip stops it (scikit-learn's
        LogisticRegression accepts such weights and fits that non-convex objective).
    warm_start : bool, start fit from the current model (the function X -> scores is kept
        exactly while the standardisation is refitted on the new X); velocity and the
        learning-rate schedule start afresh. With solver="lbfgs", a path of decreasing reg
        values fitted one after the other each starts from the previous optimum.
    random_state : int >= 0, RandomState or None. An int is the config's seed, so
        SoftmaxClassifier(random_state=s) trains exactly as `softmax-train` with seed s.
    engine : "numpy", "numba", "torch" or "auto" (picked by the class count and the device:
        docs/engines.md). numpy by default: on float32 feature rows the numba kernel measured
        2.5 times slower, on uint8 pixels as fast (scripts/benchmark_estimator.py); all give
        the same accuracy.
    device : "auto", "cpu", "cuda" or "cuda:N", where the torch engine computes (the config's
        `device`); auto is a CUDA GPU when PyTorch sees one.

    The defaults (lr 0.01, reg 1e-4, batches of 256, Nesterov momentum 0.9, cosine schedule,
    standardised features, and 5 epochs, the default before "auto") were chosen on validation
    accuracy of CIFAR-10 pixels and of 200,000 x 512 synthetic probe features; the test split
    never informed them. A fit whose full-batch gradient at the end is more than
    FAR_FROM_OPTIMUM (5%) of its size at W = 0 warns with sklearn's ConvergenceWarning: more
    epochs or a larger lr would move the model further.

    Attributes
    ----------
    classes_ : (C,) the sorted distinct labels.
    coef_ : (C, n_features_in_) float64, intercept_ : (C,) float64, in the ORIGINAL feature
        space: X @ coef_.T + intercept_ equals decision_function(X) (up to a final reshape for
        binary). For two classes, training keeps two softmax columns w0, w1 (the same math as
        for any C), but coef_ is (1, n_features_in_) = w1 - w0 and intercept_ (1,) = b1 - b0,
        as in LogisticRegression: decision_function(X) is then (n_samples,), the log-odds of
        classes_[1], positive where it is predicted, which scikit-learn's checks require of a
        binary classifier, and predict_proba(X)[:, 1] is its sigmoid. Both forms give the
        same probabilities; the two-column weights are `weights_`.
    weights_ : (C, n_features_in_ + 1) float64, every class's weights in the original
        feature space, the intercepts in the last column.
    n_features_in_ : int, feature_names_in_ : (n_features_in_,) when X had string column names.
    n_iter_ : int, epochs run by the last fit (1 per partial_fit call); L-BFGS iterations
        with solver="lbfgs".
    gradient_ratio_ : float, the full-batch gradient of the training objective at the model
        as a fraction of its size at W = 0 (fit only): near 0 at the optimum.
    best_epoch_ : int, the epoch whose weights are the model (the best on validation with
        early stopping, else the last).
    history_ : list of dict, one per epoch: epoch, lr, train_loss, train_acc, val_loss,
        val_acc (None without validation rows), seconds.
    """

    def __init__(self, *, lr: float = 0.01, reg: float = 1e-4, epochs: int | str = "auto",
                 batch_size: int = 256, momentum: float = 0.9, nesterov: bool = True,
                 schedule: str = "cosine", early_stopping: bool = False,
                 validation_fraction: float = 0.1, patience: int = 5, standardize: bool = True,
                 class_weight=None, warm_start: bool = False, random_state=None,
                 engine: str = "numpy", device: str = "auto", solver: str = "sgd",
                 tol: float = 1e-5, max_iter: int = 500, precondition: bool = True):
        self.lr = lr
        self.reg = reg
        self.epochs = epochs
        self.batch_size = batch_size
        self.momentum = momentum
        self.nesterov = nesterov
        self.schedule = schedule
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.patience = patience
        self.standardize = standardize
        self.class_weight = class_weight
        self.warm_start = warm_start
        self.random_state = random_state
        self.engine = engine
        self.device = device
        self.solver = solver
        self.tol = tol
        self.max_iter = max_iter
        self.precondition = precondition

    # -- training

    def fit(self, X, y, sample_weight=None) -> SoftmaxClassifier:
        """Train on X (n_samples, n_features) array-like of numbers, y (n_samples,) labels,
        sample_weight (n_samples,) or None. Returns self."""
        warm = self.warm_start and hasattr(self, "_model")
        X, y = validate_data(self, X, y, dtype=_TRAINING_DTYPES, order="C", reset=not warm)
        check_classification_targets(y)
        classes, y_encoded = np.unique(y, return_inverse=True)
        _check_two_classes(classes)
        if warm and not np.array_equal(classes, self.classes_):
            raise ValueError(f"warm_start: y has the classes {classes.tolist()}, the model "
                             f"was fitted on {self.classes_.tolist()}")
        sample_weight = self._effective_sample_weight(X, y_encoded, classes, sample_weight)
        seed = self._seed()
        n = len(y_encoded)
        val_size = round(self.validation_fraction * n) if self.early_stopping else 0
        if self.early_stopping and not 0 < self.validation_fraction < 1:
            raise ValueError(f"validation_fraction: must be in (0, 1), got "
                             f"{self.validation_fraction!r}")
        if self.early_stopping and self.solver == "lbfgs":
            raise ValueError("early_stopping: not with solver='lbfgs', which runs to the "
                             "optimum (tol, max_iter)")
        if val_size >= n:
            raise ValueError(f"validation_fraction: {self.validation_fraction} of {n} rows "
                             "leaves no training row")
        epochs = self._epochs(n - val_size)
        config = self._config(seed, epochs, self.lr, self.schedule,
                              self.patience if self.early_stopping else None)
        split = split_train_val(y_encoded, val_size, seed)
        stats = _RunningStats.of(X, split.train_rows)
        pre = stats.preprocessor(self.standardize)
        if warm:
            state = self._continue_from(self._model_state(), pre, restart=True)
        else:
            state = initial_state(config, pre.n_features, len(classes))
        self.classes_ = classes
        self._train(config, X, y_encoded, split, pre, state, sample_weight)
        self._seed_, self._stats = seed, stats
        # L-BFGS warned itself when it stopped short of tol
        self._warn_if_far_from_optimum(X, y_encoded, split.train_rows, sample_weight,
                                       warn=self.solver != "lbfgs")
        return self

    def _epochs(self, n_train: int) -> int:
        """The epochs of a fit on n_train rows: the parameter, or "auto"'s count."""
        if self.solver == "lbfgs":
            return 1  # unused by L-BFGS: any valid optim.epochs
        if isinstance(self.epochs, str) and self.epochs == "auto":
            steps_per_epoch = math.ceil(n_train / max(1, min(self.batch_size, n_train)))
            return max(AUTO_MIN_EPOCHS, math.ceil(AUTO_MIN_STEPS / steps_per_epoch))
        return self.epochs

    def _warn_if_far_from_optimum(self, X: np.ndarray, y_encoded: np.ndarray,
                                  rows: np.ndarray, weight: np.ndarray | None,
                                  warn: bool = True) -> None:
        """ConvergenceWarning when the gradient of the training objective (mean weighted
        cross-entropy plus the L2 term, the bias unpenalised) at the model is more than
        FAR_FROM_OPTIMUM of its size at W = 0; computed with float64 products by the numpy
        engine's full-batch evaluation (on every core, without a copy of the rows: the
        reference softmax.loss_and_grad chunk by chunk on one core was most of a
        warm-started L-BFGS fit's time at 100 classes, docs/development.md)."""
        pre, model = self._pre, self._model.astype(np.float64)
        data = TrainingRows(X, y_encoded.astype(np.int64),
                            None if weight is None else weight.astype(np.float32))
        index, rule = np.asarray(rows, np.int64), StepRule(lr=1.0, reg=self.reg)
        grads = [numpy_engine.full_loss_and_grad(data, index, W, pre, rule, ((False, 0, 0),),
                                                 "edge", "float64")[1]
                 for W in (model, np.zeros_like(model))]
        ratio = float(np.linalg.norm(grads[0]) / max(np.linalg.norm(grads[1]), 1e-300))
        self.gradient_ratio_ = ratio
        if warn and ratio > FAR_FROM_OPTIMUM:
            warnings.warn(
                f"{type(self).__name__} ended far from the optimum after "
                f"{counted(self.n_iter_, 'epoch')}: "
                f"the training objective's gradient is {ratio:.0%} of its size at zero "
                f"weights; raise epochs (or lr)", ConvergenceWarning, stacklevel=3)

    def partial_fit(self, X, y, classes=None, sample_weight=None) -> SoftmaxClassifier:
        """One epoch of SGD over X (n_samples, n_features), y (n_samples,), continuing the
        model, its momentum and its epoch count. `classes`, all labels y may ever hold, is
        required on the first call. The standardisation statistics are running statistics
        over every row seen so far; each call re-expresses the weights for the updated
        statistics (the model's function is unchanged by that) before its epoch. Call k
        (from 0) uses the learning rate the schedule gives to epoch min(k, epochs - 1); no
        validation split, no early stopping. Returns self."""
        if self.solver == "lbfgs":
            raise ValueError("partial_fit: takes SGD epochs; solver='lbfgs' solves in fit "
                             "(with warm_start=True to continue from the current model)")
        first = not hasattr(self, "_model")
        X, y = validate_data(self, X, y, dtype=_TRAINING_DTYPES, order="C", reset=first)
        check_classification_targets(y)
        if first:
            if classes is None:
                raise ValueError("classes must be given on the first call to partial_fit")
            all_classes = np.unique(classes)
            _check_two_classes(all_classes)
        elif classes is not None and not np.array_equal(np.unique(classes), self.classes_):
            raise ValueError(f"classes {np.unique(classes).tolist()} differ from the first "
                             f"call's {self.classes_.tolist()}")
        else:
            all_classes = self.classes_
        unknown = np.setdiff1d(y, all_classes)
        if len(unknown):
            raise ValueError(f"y holds labels not in classes: {unknown[:5].tolist()}")
        y_encoded = np.searchsorted(all_classes, y).astype(np.int64)
        sample_weight = self._effective_sample_weight(X, y_encoded, all_classes,
                                                      sample_weight)
        seed = self._seed() if first else self._seed_
        rows = np.arange(len(y_encoded), dtype=np.int64)
        stats = _RunningStats.of(X, rows)
        if first:
            pre = stats.preprocessor(self.standardize)
            base = self._config(seed, self._epochs(len(rows)), self.lr, self.schedule, None)
            state = initial_state(base, pre.n_features, len(all_classes))
        else:
            stats = self._stats.merged(stats)
            pre = stats.preprocessor(self.standardize)
            state = self._continue_from(self._state, pre, restart=False)
        epochs = self._epochs(len(rows))
        schedule_config = self._config(seed, epochs, self.lr, self.schedule, None)
        epoch_lr = learning_rate(schedule_config.optim, min(state.epoch, epochs - 1))
        config = self._config(seed, state.epoch + 1, epoch_lr, "constant", None)
        self.classes_ = all_classes
        self._train(config, X, y_encoded, Split(rows, rows[:0]), pre, state, sample_weight)
        self._seed_, self._stats = seed, stats
        return self

    def _train(self, config: Config, X: np.ndarray, y_encoded: np.ndarray, split: Split,
               pre: Preprocessor, state: TrainState, sample_weight: np.ndarray | None
               ) -> None:
        first_epoch = state.epoch
        lines: list[str] = []  # L-BFGS's warning, given once fit() is back (stacklevel)
        try:
            result = fit(config, X, y_encoded, split, pre, len(self.classes_), state=state,
                         sample_weight=sample_weight, warn=lines.append)
        except DeviceOutOfMemory as exc:
            raise exc.spelled(_spell_parameter, f"{type(self).__name__}: ") from None
        except TrainingDiverged as exc:
            raise ValueError(f"{type(self).__name__}: training diverged in epoch "
                             f"{state.epoch + 1} with lr={self.lr:g}, reg={self.reg:g}; lower "
                             f"lr ({exc.__cause__ or 'non-finite loss or weights'})") from None
        for line in lines:
            _convergence_warning(line)
        self._state, self._pre, self._model = result.state, pre, result.state.best_W
        self.n_iter_ = result.state.epoch - first_epoch
        self.best_epoch_ = result.state.best_epoch
        self.history_ = list(result.state.history)
        weights = pre.fold(self._model.astype(np.float64))  # (C, P + 1): original space
        self.weights_ = weights
        if len(self.classes_) == 2:
            difference = weights[1] - weights[0]
            self.coef_, self.intercept_ = difference[None, :-1].copy(), difference[-1:].copy()
        else:
            self.coef_, self.intercept_ = weights[:, :-1].copy(), weights[:, -1].copy()

    def _config(self, seed: int, epochs: int, lr: float, schedule: str,
                patience: int | None) -> Config:
        """The training Config of these parameters (features: no image augmentation)."""
        for name in _NUMBER_PARAMETERS:
            if isinstance(getattr(self, name), str):
                raise ValueError(f"{name}: must be a number, got the string "
                                 f"{shorten(getattr(self, name), quote=True)}")
        raw = {
            "seed": seed, "engine": self.engine, "device": self.device,
            "preprocess": {"center": self.standardize,
                           "scale": "std" if self.standardize is True else "none", "bias": True},
            "loss": {"reg": self.reg},
            "optim": {"solver": self.solver, "tol": self.tol, "max_iter": self.max_iter,
                      "precondition": self.precondition,
                      "epochs": epochs, "batch_size": self.batch_size, "lr": lr,
                      "momentum": self.momentum, "nesterov": self.nesterov,
                      "schedule": {"name": schedule}, "early_stopping": {"patience": patience}},
            "augment": {"hflip": False, "translate": 0},
        }
        try:
            return config_from_dict(_python_scalars(raw))
        except ConfigError as exc:
            key, _, problem = str(exc).partition(": ")
            raise ValueError(f"{_PARAMETER_OF_KEY.get(key, key)}: {problem}") from None

    def _seed(self) -> int:
        if isinstance(self.random_state, numbers.Integral) and not isinstance(
                self.random_state, bool):
            return int(self.random_state)  # validated as the config's seed (>= 0)
        return int(check_random_state(self.random_state).randint(np.iinfo(np.int32).max))

    def _effective_sample_weight(self, X, y_encoded, classes, sample_weight
                                 ) -> np.ndarray | None:
        """sample_weight times class_weight per row (n_samples,) float64, or None for all 1."""
        if sample_weight is None and self.class_weight is None:
            return None
        checked = _check_sample_weight(sample_weight, X, dtype=np.float64)
        if self.class_weight is not None:
            present = np.unique(y_encoded)
            per_class = np.ones(len(classes))
            per_class[present] = compute_class_weight(self.class_weight, classes=classes[present],
                                                      y=classes[y_encoded])
            checked = checked * per_class[y_encoded]
        if (checked < 0).any():
            row = int(np.argmax(checked < 0))
            raise ValueError(f"sample weights must be >= 0 (with class_weight multiplied in): "
                             f"row {row} has {checked[row]:g}; a negative weight rewards "
                             "misclassifying its row, and the loss has no minimum")
        with np.errstate(over="ignore"):
            as_trained = checked.astype(np.float32)  # training's weights are float32
        if not np.isfinite(as_trained).all():
            row = int(np.argmax(~np.isfinite(as_trained)))
            raise ValueError(f"sample weights must be finite and representable in float32 "
                             f"(at most {np.finfo(np.float32).max:.4g}, with class_weight "
                             f"multiplied in): row {row} has {checked[row]:g}")
        if not (as_trained > 0).any():
            raise ValueError("sample weights must have at least one positive weight in "
                             "float32 (with class_weight multiplied in): all are 0 or round to "
                             f"0 (the smallest positive float32 is "
                             f"{np.finfo(np.float32).smallest_subnormal:.4g})")
        return checked

    def _model_state(self) -> TrainState:
        model = self._model
        return TrainState(model.copy(), np.zeros_like(model), model.copy(), model.copy())

    def _continue_from(self, state: TrainState, pre: Preprocessor, restart: bool) -> TrainState:
        """`state` with its weights re-expressed for preprocessing `pre`: the same scores on
        every row. restart: epoch count, history and best epoch start afresh."""
        old = self._pre

        def convert(W: np.ndarray) -> np.ndarray:
            return pre.unfold(old.fold(W.astype(np.float64))).astype(np.float32)

        W, velocity, average, best_W = (convert(a) for a in (state.W, state.velocity,
                                                              state.average, state.best_W))
        if restart:
            return TrainState(W, np.zeros_like(W), W.copy(), W.copy())
        return TrainState(W, velocity, average, best_W, state.epoch, state.best_epoch,
                          state.best_val_acc, state.epochs_since_best, list(state.history))

    # -- prediction

    def decision_function(self, X) -> np.ndarray:
        """Scores float64: (n_samples, C), or (n_samples,) for two classes (the log-odds of
        classes_[1]), equal to X @ coef_.T + intercept_."""
        check_is_fitted(self)
        X = validate_data(self, X, reset=False, dtype=[np.float64, np.float32])
        scores = np.empty((len(X), len(self.intercept_)))
        for start in range(0, len(X), PREDICT_CHUNK):
            block = np.asarray(X[start : start + PREDICT_CHUNK], dtype=np.float64)
            scores[start : start + PREDICT_CHUNK] = block @ self.coef_.T + self.intercept_
        return scores.ravel() if scores.shape[1] == 1 else scores

    def _class_scores(self, X) -> np.ndarray:
        """(n_samples, C) float64 scores whose softmax is the class probabilities."""
        scores = self.decision_function(X)
        if scores.ndim == 1:
            return np.column_stack([np.zeros_like(scores), scores])
        return scores

    def predict(self, X) -> np.ndarray:
        """Predicted labels (n_samples,) from classes_: the argmax of the scores."""
        scores = self._class_scores(X)  # checks that the model is fitted first
        return self.classes_[scores.argmax(axis=1)]

    def predict_log_proba(self, X) -> np.ndarray:
        """log P(class | x) (n_samples, C) float64, the exact log-softmax (no clipping)."""
        scores = self._class_scores(X)
        shifted = scores - scores.max(axis=1, keepdims=True)
        return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))

    def predict_proba(self, X) -> np.ndarray:
        """P(class | x) (n_samples, C) float64, columns in classes_ order, rows sum to 1."""
        return np.exp(self.predict_log_proba(X))


def _convergence_warning(line: str) -> None:
    """L-BFGS's line when it stopped short of tol, as scikit-learn's ConvergenceWarning,
    attributed to the line that called fit (called from _train, called from fit)."""
    for key, parameter in (("optim.max_iter", "max_iter"), ("optim.tol", "tol"),
                           ("preprocess.scale std", "standardize=True")):
        line = line.replace(key, parameter)
    warnings.warn(line, ConvergenceWarning, stacklevel=4)


def _spell_parameter(key: str, value: str) -> str | None:
    """A config setting as this estimator's parameter: ("device", "cpu") -> device="cpu",
    ("optim.batch_size", "N") -> batch_size=N; None for a key without a parameter."""
    name = _PARAMETER_OF_KEY.get(key)
    if name is None:
        return None
    return f"{name}={value}" if value == "N" else f'{name}="{value}"'


def _python_scalars(raw: dict) -> dict:
    """`raw` with numpy scalars (np.int64 from GridSearchCV over np.arange, np.float32, ...)
    as the Python numbers the config schema takes, mapping into mapping."""
    return {key: _python_scalars(value) if isinstance(value, dict)
            else value.item() if isinstance(value, np.generic) else value
            for key, value in raw.items()}


def _check_two_classes(classes: np.ndarray) -> None:
    if len(classes) < 2:
        raise ValueError(f"SoftmaxClassifier needs at least 2 classes in y, got "
                         f"{len(classes)} class ({classes.tolist()})")


class _RunningStats:
    """Count, mean (P,) and sum of squared deviations m2 (P,) float64 of the rows seen so far,
    mergeable (Chan et al.). Unmerged, it keeps pixel_mean_std's std as computed, so its
    Preprocessor is exactly fit_preprocessor's on the same rows."""

    def __init__(self, count: int, mean: np.ndarray, m2: np.ndarray,
                 std: np.ndarray | None = None):
        self.count, self.mean, self.m2, self.std = count, mean, m2, std

    @classmethod
    def of(cls, X: np.ndarray, rows: np.ndarray) -> _RunningStats:
        mean, std = pixel_mean_std(X, rows)
        return cls(len(rows), mean, std * std * len(rows), std)

    def merged(self, other: _RunningStats) -> _RunningStats:
        count = self.count + other.count
        delta = other.mean - self.mean
        mean = self.mean + delta * (other.count / count)
        m2 = self.m2 + other.m2 + delta * delta * (self.count * other.count / count)
        return _RunningStats(count, mean, m2)

    def preprocessor(self, standardize: bool) -> Preprocessor:
        """fit_preprocessor's statistics: centre true and scale std, or centre false and
        scale none, with the bias column."""
        P = len(self.mean)
        if not standardize:
            return Preprocessor(np.zeros(P), np.ones(P), True)
        std = self.std if self.std is not None else np.sqrt(np.maximum(self.m2 / self.count, 0))
        return Preprocessor(self.mean.copy(), 1 / np.maximum(std, MIN_STD), True)
