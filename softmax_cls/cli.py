"""Console scripts: thin click commands over the library. All logic lives in importable modules.

User errors (bad config, options, data, checkpoints) end with one `error: ...` line on stderr
and a non-zero exit code: 2 for usage and config errors, 1 for the others, 130 for Ctrl-C,
143 for SIGTERM (handled like Ctrl-C: training saves the last completed epoch first).
"""

from __future__ import annotations

import json
import math
import os
import sys

import click

from . import __version__
from .errors import ConfigError, DeviceOutOfMemory, InputError, SoftmaxClsError
from .text import counted, shorten

CHECKPOINT_NAMES = ("best.npz", "last.npz")  # what a run folder holds; a sweep's: best.npz
SKIPPED_NAMED = 3  # files softmax-predict --skip-unreadable names in its line

# How a command's one error line names a config setting (key, value) that the user can change
# (DeviceOutOfMemory): as its --set override, or as softmax-eval's own option; commands not
# named here (softmax-sweep: its file) keep the config's `key: value`
OPTION_SPELLING = {
    "train": lambda key, value: f"--set {key}={value}",
    "gradcheck": lambda key, value: f"--set {key}={value}",
    "eval": lambda key, value: f"--{key} {value}" if key in ("device", "engine") else None,
}


class Command(click.Command):
    """A click command whose every user error is one line on stderr, never a traceback."""

    def main(self, args=None, prog_name=None, **extra):
        from .interrupts import sigterm_as_interrupt, stop_word_and_code

        extra.pop("standalone_mode", None)
        try:
            with sigterm_as_interrupt():
                result = super().main(args, prog_name, standalone_mode=False, **extra)
        except click.ClickException as exc:
            message = exc.format_message()
            if isinstance(exc, click.MissingParameter):  # click lists a Choice's values one
                message = message.replace("\n\t", " ")  # per line: they fit on one
            _fail(message, exc.exit_code)
        except click.Abort as exc:
            _fail(*stop_word_and_code(exc.__cause__))
        except DeviceOutOfMemory as exc:
            spell = OPTION_SPELLING.get(self.name)
            _fail(str(exc.spelled(spell) if spell else exc), exc.exit_code)
        except SoftmaxClsError as exc:
            _fail(str(exc), exc.exit_code)
        except MemoryError as exc:  # the host's memory (numpy names the array it could not get)
            _fail(f"out of memory{': ' + shorten(exc, 200) if str(exc) else ''}", 1)
        except OSError as exc:  # a folder that cannot be created, a disk that is full, ...
            where = f"{shorten(exc.filename)}: " if exc.filename else ""
            reason = exc.strerror or str(exc)
            if isinstance(exc, PermissionError) and "permission" not in reason.lower():
                reason = f"permission denied ({reason})"
            _fail(f"{where}{reason}", 1)
        sys.exit(result if isinstance(result, int) else 0)

    def make_context(self, info_name, args, parent=None, **extra):
        """The parsed options; Ctrl-C or SIGTERM while they are read (an option's callback:
        --threads) is one error line, as in invoke."""
        from .interrupts import stop_word_and_code

        try:
            return super().make_context(info_name, args, parent, **extra)
        except KeyboardInterrupt as exc:
            _fail(*stop_word_and_code(exc))

    def invoke(self, ctx):
        """The command; Ctrl-C or SIGTERM in it is one error line (click's own handling
        would print an empty line before it)."""
        from .interrupts import stop_word_and_code

        try:
            return super().invoke(ctx)
        except KeyboardInterrupt as exc:
            _fail(*stop_word_and_code(exc))


MESSAGE_CAP = 1000  # characters of an error line; its values are cut shorter where made


def _fail(message: str, code: int) -> None:
    """One `error:` line: control characters (a newline in a path, say) escaped, whatever
    the message holds, and the line cut at MESSAGE_CAP characters."""
    line = "".join(c if c.isprintable() else repr(c)[1:-1] for c in message)
    if len(line) > MESSAGE_CAP:
        line = f"{line[:MESSAGE_CAP]}...({len(line)} characters)"
    click.echo(f"error: {line}", err=True)
    sys.exit(code)


quiet_option = click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
set_option = click.option("--set", "overrides", multiple=True, metavar="KEY.PATH=VALUE",
                          help="Override a config key, e.g. --set optim.lr=0.01 (repeatable).")


def _engine_name(context, parameter, value):
    """softmax-eval --engine: a name that is no engine is a command-line error (exit 2)."""
    from .config import ENGINE_NAMES

    if value not in ENGINE_NAMES:
        raise click.BadParameter(f"must be one of {', '.join(ENGINE_NAMES)}, got "
                                 f"{shorten(value, 40, quote=True)}")
    return value


def _device_name(context, parameter, value):
    """softmax-eval --device: a name that is no device is a command-line error (exit 2)."""
    from .config import DEVICE_PATTERN

    if not DEVICE_PATTERN.fullmatch(value):
        raise click.BadParameter(f"must be auto, cpu, cuda or cuda:N, got "
                                 f"{shorten(value, 40, quote=True)}")
    return value


def _use_threads(context, parameter, value):
    if value is not None:
        from .threads import use_threads

        try:
            use_threads(value)
        except ConfigError as exc:
            raise click.BadParameter(str(exc).partition(": ")[2]) from None
    return value


threads_option = click.option(
    "--threads", type=int, expose_value=False, callback=_use_threads, metavar="N",
    help="Compute on N threads (BLAS and numba) [default: every CPU, or the OPENBLAS_NUM_THREADS "
         "/ NUMBA_NUM_THREADS already set].")


class NamedPath(click.Path):
    """A path that is not empty: '' is no file or folder (POSIX's ENOENT), where Path('')
    would be the current folder (--out '' wrote a run's plots there, a predict read it).
    A CheckpointPath names the checkpoints of a run or sweep folder given in its place
    (click's own line said only that it is a directory)."""

    def convert(self, value, param, ctx):
        if isinstance(value, str) and value == "":
            self.fail("is empty; name a file or folder ('.' for this one)", param, ctx)
        return super().convert(value, param, ctx)


class CheckpointPath(NamedPath):
    """A checkpoint file (.npz); a run or sweep folder in its place is one line naming the
    checkpoints it holds."""

    def __init__(self, names: tuple[str, ...] = CHECKPOINT_NAMES):
        super().__init__(dir_okay=False)
        self.names = names  # in the order the line suggests them

    def convert(self, value, param, ctx):
        if isinstance(value, str) and value and os.path.isdir(value):
            held = [os.path.join(value, name) for name in self.names
                    if os.path.isfile(os.path.join(value, name))]
            if held:
                self.fail(f"{click.format_filename(value)!r} is a folder; name a checkpoint "
                          f"in it: {' or '.join(map(repr, held))}", param, ctx)
        return super().convert(value, param, ctx)


class PositiveFinite(click.FloatRange):
    """A float > 0 and finite: click's FloatRange(0, min_open=True) lets nan through (every
    comparison with nan is false), and inf."""

    name = "positive finite float"

    def __init__(self):
        super().__init__(0, min_open=True)

    def convert(self, value, param, ctx):
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"must be a finite number > 0, got {number}", param, ctx)
        return number


config_option = click.option("--config", "config_path", type=NamedPath(dir_okay=False),
                             help="YAML config file (see configs/default.yaml).")


@click.command(cls=Command)
@click.option("--dataset", type=click.Choice(["cifar10", "cifar100"]), default="cifar10",
              show_default=True, help="The data set to fetch.")
@click.option("--root", default="data", show_default=True, type=NamedPath(file_okay=False),
              help="Folder the data lands in.")
@click.option("--format", "fmt", type=click.Choice(["binary", "python"]), default="binary",
              show_default=True, help="The archive's format: binary (read without any pickle) "
              "or python (pickled batches).")
@click.option("--url", help="Archive URL of a mirror (default: the official one, or "
              "$SOFTMAX_CLS_MIRROR/<archive name>).")
@click.option("--archive", type=NamedPath(dir_okay=False),
              help="A local copy of the archive to verify and extract instead of downloading.")
@click.option("--force", is_flag=True, help="Download and extract again; the old copy is "
              "replaced only once the new one verified.")
@quiet_option
@click.version_option(__version__)
def download_command(dataset, root, fmt, url, archive, force, quiet):
    """Download, verify and extract CIFAR-10 or CIFAR-100."""
    from .data.fetch import prepare_dataset

    folder = prepare_dataset(dataset, root, fmt, url=url, archive=archive, force=force,
                             progress=not quiet)
    click.echo(f"{dataset} ({fmt}) verified in {folder}")


@click.command(cls=Command)
@config_option
@set_option
@click.option("--out", type=NamedPath(file_okay=False),
              help="Run folder [default: output.dir (output.dir-2, -3, ... when it holds a "
              "run), or the resumed checkpoint's folder].")
@click.option("--resume", type=CheckpointPath(names=tuple(reversed(CHECKPOINT_NAMES))),
              help="Continue from a last.npz exactly where it stopped.")
@click.option("--overwrite", is_flag=True,
              help="Replace the run already in the run folder (its files are deleted first; "
              "only files a run wrote, never through a symbolic link).")
@click.option("--plots/--no-plots", default=None,
              help="Draw the run's pictures into RUN/plots at the end [default: as "
                   "output.plots says; null = when matplotlib is installed].")
@quiet_option
@threads_option
@click.version_option(__version__)
def train_command(config_path, overrides, out, resume, overwrite, plots, quiet):
    """Train a linear softmax classifier as the config says.

    Writes a run folder with config.yaml, history.jsonl, best.npz, last.npz, summary.json
    and (with the plot extra) plots/, and prints the test accuracy of the best weights on
    validation.
    """
    from .interrupts import stop_word_and_code
    from .plots.pictures import NO_PLOTS_HINT, default_out_dir, draw_training_run, plots_wanted
    from .training.runs import finished_line, plan_run, run_plan

    # -- what to run: the config, the run folder, the checkpoint to continue; no data yet
    plan = plan_run(config_path, overrides, out, resume, overwrite)
    done = finished_line(plan)
    if done is not None:  # a finished run resumed in place: its files stay as they are
        click.echo(done)
        return
    draw = plots_wanted(plan.config.output.plots if plots is None else plots)
    if draw:
        # RUN/plots a link or a file (--overwrite deletes only the run files): refused now,
        # not after training
        default_out_dir(plan.out_dir, run_folder=True, hint=NO_PLOTS_HINT)
    # -- the run: the folder locked, the data loaded, training, the one test evaluation
    result = run_plan(plan, progress=not quiet, overwrite=overwrite)
    # -- the pictures, from what the run holds in memory
    if draw:
        try:
            pictures = draw_training_run(result)
        except KeyboardInterrupt as exc:
            word, code = stop_word_and_code(exc)
            _fail(f"{word} while drawing the pictures; the run in {result.out_dir} is complete: "
                  f"draw them with softmax-plot {result.out_dir}", code)
        click.echo(f"pictures: {', '.join(str(path) for path in pictures)}")
    state = result.state
    test = ("no test split" if result.test_acc is None else
            f"test accuracy {result.test_acc:.4f} (loss {result.test_loss:.4f})")
    folder = (f"new run folder {result.out_dir} ({plan.config.output.dir} already holds a run)"
              if plan.numbered else f"run folder {result.out_dir}")
    if result.solver is not None:
        solver = result.solver
        click.echo(f"{test} at the L-BFGS optimum: val accuracy {state.best_val_acc:.4f}; "
                   f"{counted(solver['iterations'], 'iteration')}, "
                   f"loss {solver['final_loss']:.6f}, "
                   f"gradient max-norm {solver['grad_max']:.2e} "
                   f"({'converged' if solver['converged'] else 'not converged'}); {folder}")
        return
    click.echo(f"{test} with the best weights on validation: epoch {state.best_epoch}, val "
               f"accuracy {state.best_val_acc:.4f}; {counted(state.epoch, 'epoch')}"
               f"{', stopped early' if result.stopped_early else ''}; {folder}")


@click.command(cls=Command)
@click.argument("checkpoint", type=CheckpointPath())
@click.option("--split", type=click.Choice(["test", "val", "train"]), default="test",
              show_default=True, help="The split to evaluate: test, val (the checkpoint's own "
              "validation rows) or train (every other training row).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("--root", type=NamedPath(file_okay=False),
              help="Data folder (default: the one the checkpoint was trained with).")
@click.option("--download", is_flag=True,
              help="Download the data if it is not there (by default eval never downloads).")
@click.option("--engine", default="numpy", show_default=True, metavar="NAME",
              callback=_engine_name,
              help="Engine that scores the rows: numpy, numba, torch or auto.")
@click.option("--device", default="auto", show_default=True, metavar="DEVICE",
              callback=_device_name,
              help="Where the torch engine computes: auto, cpu, cuda or cuda:N.")
@quiet_option
@threads_option
@click.version_option(__version__)
def eval_command(checkpoint, split, as_json, root, download, engine, device, quiet):
    """Accuracy, per-class precision / recall / F1 and the confusion matrix of a checkpoint."""
    from .math.metrics import format_report
    from .training.evaluate import evaluate_checkpoint

    if device.startswith("cuda") and engine in ("numba", "numpy"):
        raise click.UsageError(f"--device {device}: only engine torch runs on a GPU (pass "
                               f"--engine torch or auto, or --device cpu), got --engine {engine}")
    report = evaluate_checkpoint(checkpoint, split, root, progress=not quiet,
                                 download=download, engine=engine, device=device)
    if as_json:
        click.echo(json.dumps({"checkpoint": str(checkpoint), "split": split, **report.to_dict()},
                              indent=2))
    else:
        click.echo(f"{checkpoint} on the {split} split")
        click.echo(format_report(report))


@click.command(cls=Command)
@config_option
@set_option
@click.option("--samples", default=500, show_default=True, type=click.IntRange(1),
              help="Rows of the problem.")
@click.option("--classes", default=10, show_default=True, type=click.IntRange(2),
              help="Classes of the random problem (with --config: the data set's).")
@click.option("--checks", default=10, show_default=True, type=click.IntRange(1),
              help="Random coordinates of W checked per objective, drawn without "
                   "replacement: at most W's entries (classes x features); each costs two "
                   "evaluations of every objective.")
@click.option("--step", default=1e-5, show_default=True, type=PositiveFinite(),
              help="h of the centred differences.")
@click.option("--tol", default=1e-7, show_default=True, type=PositiveFinite(),
              help="Largest relative error that passes.")
@click.option("--reg", default=None, type=PositiveFinite(),
              help="The reg > 0 of the second check [default: loss.reg, or 0.01].")
@click.option("--seed", default=0, show_default=True, type=click.IntRange(0),
              help="Seed of the random problem and of the coordinates checked.")
@threads_option
@click.version_option(__version__)
def gradcheck_command(config_path, overrides, samples, classes, checks, step, tol, reg, seed):
    """Check the analytic softmax gradient against centred finite differences (float64).

    Without --config: a seeded random problem of uint8 images (--samples x 3073 features x
    --classes). With --config: a sample of the real preprocessed training data. Exits 0 when
    every maximum relative error is at most --tol and the loop reference agrees, 1 otherwise.
    """
    from .config import load_config
    from .training import gradcheck

    if config_path is None and overrides:
        raise ConfigError("--set needs --config")
    if config_path is None:
        problem = gradcheck.random_image_problem(samples, classes, seed,
                                                 reg=0.01 if reg is None else reg)
    else:
        config = load_config(config_path, overrides)
        problem = gradcheck.config_problem(config, samples, seed, reg)
    if checks > problem.W.size:  # it checked each entry once, for as long as that took
        n_classes, n_features = problem.W.shape
        raise ConfigError(f"--checks: at most {problem.W.size} (each entry of W once: "
                          f"{n_classes} classes x {n_features} features), got {checks}")
    results = gradcheck.run_gradcheck(problem, checks, step, tol, seed)
    click.echo(gradcheck.format_report(results))
    passed = all(r.passed for r in results) and gradcheck.full_comparisons_agree(results)
    click.echo("gradient check passed" if passed else "gradient check FAILED")
    return 0 if passed else 1


@click.command(cls=Command)
@click.argument("path", type=NamedPath())
@click.option("--out", type=NamedPath(file_okay=False),
              help="Folder for the PNGs [default: PATH/plots; for a checkpoint file, "
              "plots-<name> beside it].")
@click.option("--split", type=click.Choice(["test", "val"]),
              help="The split of confusion.png and mistakes.png (a run or a checkpoint) "
              "[default: test].")
@click.option("--root", type=NamedPath(file_okay=False),
              help="Data folder (default: the one the checkpoint was trained with).")
@quiet_option
@click.version_option(__version__)
def plot_command(path, out, split, root, quiet):
    """Draw the pictures of a run folder, a checkpoint .npz or a sweep folder as PNGs.

    A run or a checkpoint: curves.png (loss, accuracy and learning rate per epoch, the best
    epoch marked), templates.png (each class's weights as an image), confusion.png (the
    row-normalised confusion matrix with counts) and mistakes.png (the most confidently wrong
    images). A sweep folder: sweep.png (val accuracy over the two most important parameters)
    and trials.png (each trial and the best so far). Prints the paths written. Needs
    matplotlib: pip install 'softmax-cls[plot]'.
    """
    from .plots.pictures import plot_path

    for written in plot_path(path, out, split, root, progress=not quiet):
        click.echo(str(written))


@click.command(cls=Command)
@click.argument("sweep_file", type=NamedPath(dir_okay=False))
@click.option("--trials", type=int, help="Trials to run in all [default: the sweep file's "
              "trials; a grid runs each point once].")
@click.option("--workers", type=click.IntRange(1), default=1, show_default=True,
              help="Trials at once: local processes sharing one memory-mapped copy of the "
              "training data, each with cores / workers threads (with --dask: trials in "
              "flight, default the cluster's threads).")
@click.option("--out", type=NamedPath(file_okay=False),
              help="Sweep folder [default: runs/<sweep file name>]. The same command resumes.")
@click.option("--dask", "dask_address", metavar="ADDRESS",
              help="Run the trials on this Dask scheduler, e.g. tcp://host:8786.")
@click.option("--storage", metavar="URL", help="An optuna storage URL shared by sweep commands "
              "on several machines, e.g. postgresql://... [default: study.journal in the "
              "sweep folder].")
@click.option("--study", "study_name", help="Study name in the storage [default: the sweep "
              "file's name].")
@click.option("--plots/--no-plots", default=None,
              help="Draw sweep.png and trials.png at the end [default: as the base config's "
              "output.plots says; null = when matplotlib is installed].")
@quiet_option
@click.version_option(__version__)
def sweep_command(sweep_file, trials, workers, out, dask_address, storage, study_name, plots,
                  quiet):
    """Search hyper-parameters on validation accuracy with optuna; resumable and parallel.

    Writes the sweep folder (a new or empty one, or this sweep's own): study.json,
    sweep.yaml, trials.csv, best.yaml (softmax-train --config best.yaml reproduces the best
    trial), best.npz and summary.json (with the test accuracy of the best trial, evaluated
    once at the end). Needs pip install 'softmax-cls[sweep]'.
    """
    from .sweep.driver import run_sweep

    result = run_sweep(sweep_file, trials=trials, workers=workers, out=out, dask=dask_address,
                       storage=storage, study_name=study_name, progress=not quiet, plots=plots)
    if result.finished is not None:  # run again with nothing left to do: nothing written
        click.echo(result.finished)
        return
    counts = ", ".join(f"{n} {state}" for state, n in result.counts.items() if n)
    test = ("no test split" if result.test_acc is None
            else f"test accuracy {result.test_acc:.4f}")
    click.echo(f"best trial {result.best_number}: val accuracy {result.best_val_acc:.4f}, "
               f"{test}; trials: {counts}; sweep folder {result.folder}")


@click.command(cls=Command)
@click.argument("checkpoint", type=CheckpointPath())
@click.argument("inputs", nargs=-1, required=True, metavar="IMAGE_OR_FOLDER...",
                type=NamedPath(readable=False))  # --skip-unreadable skips what it may not read
@click.option("--top-k", "k", type=click.IntRange(1), default=None,
              help="Classes shown per image, most probable first [default: 3, or every class "
              "of a model with fewer].")
@click.option("--json", "as_json", is_flag=True,
              help="One JSON object per image (JSON lines) instead of the table.")
@click.option("--batch-size", type=click.IntRange(1), default=256, show_default=True,
              help="Images read and scored at a time.")
@click.option("--skip-unreadable", is_flag=True,
              help="Skip the files that cannot be read or decoded and go on; one line on "
              f"stderr at the end counts them and names the first {SKIPPED_NAMED}. Without "
              "it, the first such file ends the command with an error.")
@quiet_option
@threads_option
@click.version_option(__version__)
def predict_command(checkpoint, inputs, k, as_json, batch_size, skip_unreadable, quiet):
    """Predict the classes of images (files, or folders of them) with a checkpoint.

    Images of any size are resized: the shorter side to 32 pixels, then the centre 32 x 32
    is cut out. Prints each image's top-k classes with their probabilities. A linear probe's
    checkpoint takes .npy / .npz feature files instead (each row one prediction). Needs
    Pillow for images: pip install 'softmax-cls[images]'.
    """
    from tqdm import tqdm

    from .data.features import feature_file_rows
    from .data.images import require_pillow
    from .inference.files import expand_inputs, input_suffixes, predict_files
    from .inference.model import Model
    from .inference.output import Table, display_name, json_lines

    model = Model.load(checkpoint)
    if k is None:
        k = min(3, len(model.class_names))
    if k > len(model.class_names):
        raise click.BadParameter(f"{k} is more than the model's {len(model.class_names)} "
                                 "classes", param_hint="'--top-k'")
    if model.is_image_model:
        require_pillow()
    files = expand_inputs(list(inputs), input_suffixes(model))
    table = Table(model.class_names, k, max(map(len, map(display_name, files))))
    if not model.is_image_model:  # rows are named file[i]: the widest is the last row's
        rows = [(path, feature_file_rows(path)) for path in files]
        table.name_width = max([table.name_width, *(len(display_name(f"{path}[{n - 1}]"))
                                                    for path, n in rows if n)])
    skipped, predicted = [], 0
    with tqdm(total=len(files), unit="file", desc="predict", leave=False,
              disable=quiet or len(files) <= batch_size) as bar:
        for batch in predict_files(model, files, k, batch_size, skip_unreadable):
            if not model.is_image_model:
                table.name_width = max([table.name_width,
                                        *(len(display_name(name)) for name in batch.names)])
            if not (as_json or predicted or not batch.names):  # no header above an error
                click.echo(table.header())
            for line in (json_lines(batch, model.class_names) if as_json
                         else table.lines(batch)):
                click.echo(line)
            skipped += batch.skipped
            predicted += len(batch.names)
            bar.update(batch.n_files)
    if skipped:
        names = ", ".join(shorten(path, 80) for path in skipped[:SKIPPED_NAMED])
        line = (f"{counted(len(skipped), 'unreadable file')}: "
                f"{names}{', ...' if len(skipped) > SKIPPED_NAMED else ''}")
        if not predicted:
            raise InputError(f"no file could be read; {line}")
        click.echo(f"skipped {line}", err=True)


@click.command(cls=Command)
@click.argument("checkpoint", type=CheckpointPath())
@click.option("--format", "fmt", type=click.Choice(["onnx", "npz"]), required=True,
              help="onnx: the whole model on uint8 pixels (NHWC), softmax at the end (needs "
              "pip install 'softmax-cls[onnx]'); npz: W_raw with the preprocessing folded in.")
@click.option("-o", "--out", required=True, type=NamedPath(dir_okay=False),
              help="The file to write.")
@click.option("--overwrite", is_flag=True, help="Replace OUT if it exists.")
@click.version_option(__version__)
def export_command(checkpoint, fmt, out, overwrite):
    """Export a checkpoint for other tools: ONNX, or numpy weights with preprocessing folded in.

    onnx: the whole model on uint8 pixels, probabilities out. npz: W_raw, the weights with the
    preprocessing folded in (scores = [raw pixels, 1] @ W_raw.T).
    """
    from .inference.export import export

    click.echo(f"wrote {shorten(export(checkpoint, fmt, out, overwrite))}")
