"""Mutation testing of the numba engine: a scripted set of realistic one-line breaks, each
applied to a copy of the package in a temporary folder, against the engine's tests.

mutmut would compile the numba kernels once per mutant and test, far too slowly; here each
mutant costs one compile of the kernels its tests call (in a private NUMBA_CACHE_DIR: numba's
cache index would else hand a mutant the kernels compiled from other source). A mutant is
killed when the tests fail (or crash, or run past --timeout); a survivor of the plain tests
is run once more through the NUMBA_BOUNDSCHECK test (tests/test_kernels.py), which catches
reads and writes out of bounds that the plain tests cannot see.

    python scripts/mutate_kernels.py                 # every mutant, a table and a JSON file
    python scripts/mutate_kernels.py --list          # the mutants' names
    python scripts/mutate_kernels.py --only tile_reads_one_row_past,clip_against_squared_norm
    NUMBA_OPT=0 python scripts/mutate_kernels.py     # compiles in about half the time

Run from the repository root; it takes about 1-2 minutes per mutant on two cores.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ENGINE = "softmax_cls/engines/numba_engine"
GOVERNOR = "softmax_cls/engines/governor.py"

# The numba engine's tests; -x: a mutant is killed by its first failure.
PLAIN_TESTS = ["tests/test_governor.py", "tests/test_engines.py", "tests/test_kernels.py",
               "-k", "(numba or test_kernels or test_governor) and not no_read_out"]
BOUNDSCHECK_TEST = ["tests/test_kernels.py::test_no_read_out_of_bounds"]
# The full-batch objective's tests (full.py): numba's against the float64 reference
FULL = f"{ENGINE}/full.py"
FULL_TESTS = ("tests/test_lbfgs.py", "tests/test_float16.py", "-k",
              "(numba and (reference or clipped or centring or memory_map or non_finite or "
              "full_batch or governor or many_classes or read_only)) or bit_for_bit or "
              "float16_bits")

# The softmax's exp (expo.py): against numpy's exp, and the evaluations that use it
EXPO = f"{ENGINE}/expo.py"
EXPO_TESTS = ("tests/test_kernels.py", "tests/test_lbfgs.py", "-k",
              "exp_into or (numba and reference)")


@dataclass(frozen=True)
class Mutant:
    name: str
    path: str  # relative to the repository root
    old: str  # a piece of one line, found exactly once in the file
    new: str
    tests: tuple[str, ...] = ()  # pytest arguments, when not PLAIN_TESTS


MUTANTS = [
    # -- gather: augmentation, prefetch
    Mutant("padded_index_inside_includes_side", f"{ENGINE}/gather.py",
           "if 0 <= s < SIDE:", "if 0 <= s <= SIDE:"),
    Mutant("reflect_repeats_the_edge_pixel", f"{ENGINE}/gather.py",
           "return -s if s < 0 else 2 * (SIDE - 1) - s",
           "return -s - 1 if s < 0 else 2 * (SIDE - 1) - s"),
    Mutant("edge_padding_reads_one_column_in", f"{ENGINE}/gather.py",
           "return 0 if s < 0 else SIDE - 1", "return 0 if s < 0 else SIDE - 2"),
    Mutant("mirror_swaps_only_the_outer_words", f"{ENGINE}/gather.py",
           "for w in range(2):", "for w in range(1):"),
    Mutant("shift_bottom_sign_swapped", f"{ENGINE}/gather.py",
           "top, bottom = max(0, dy), min(SIDE, SIDE + dy)",
           "top, bottom = max(0, dy), min(SIDE, SIDE - dy)"),
    Mutant("shift_unshifted_when_one_axis_is_zero", f"{ENGINE}/gather.py",
           "if dy == 0 and dx == 0:", "if dy == 0 or dx == 0:"),
    Mutant("gather_reads_dy_for_dx", f"{ENGINE}/gather.py",
           "dx = shift[position, 1] if", "dx = shift[position, 0] if"),
    Mutant("flip_forgotten_after_mirroring", f"{ENGINE}/gather.py",
           "        _shift_into(image, dy, dx, padding, u)\n    else:",
           "        _shift_into(src, dy, dx, padding, u)\n    else:"),
    Mutant("prefetch_the_current_tile", f"{ENGINE}/step.py",
           "ahead = position + i + TILE_ROWS", "ahead = position + i"),
    # -- step: tiles and scores
    Mutant("tile_reads_one_row_past", f"{ENGINE}/step.py",
           "        if r < n:\n            row = U[i + r]",
           "        if r <= n:\n            row = U[i + r]"),
    Mutant("tile_rows_past_n_not_zeroed", f"{ENGINE}/step.py",
           "                tile[r, np.uint64(jj)] = 0", "                pass"),
    Mutant("scores_written_one_row_past", f"{ENGINE}/step.py",
           "    for r in range(len(sums)):\n        if r < n:\n            if add:",
           "    for r in range(len(sums)):\n        if r <= n:\n            if add:"),
    Mutant("score_pairs_stop_one_pair_early", f"{ENGINE}/step.py",
           "    while c + 2 <= n_classes:\n        a0 = a1",
           "    while c + 2 < n_classes:\n        a0 = a1"),
    Mutant("second_class_score_uses_first_weight", f"{ENGINE}/step.py",
           "            b7 += t7 * w", "            b7 += t7 * v"),
    Mutant("four_row_scores_skip_the_second_half", f"{ENGINE}/step.py",
           "for r in range(0, TILE_ROWS, 4):", "for r in range(0, 4, 4):"),
    Mutant("four_row_second_class_uses_first_weight", f"{ENGINE}/step.py",
           "                b3 += t3 * w", "                b3 += t3 * v"),
    Mutant("four_row_second_half_counts_all_rows", f"{ENGINE}/step.py",
           "_put_scores(S, i + r, n - r, c + 1,", "_put_scores(S, i + r, n, c + 1,"),
    Mutant("four_row_odd_class_reads_a_row_twice", f"{ENGINE}/step.py",
           "a3 += tile[r + 3, k] * v", "a3 += tile[r + 2, k] * v"),
    Mutant("layouts_chosen_the_wrong_way_round", f"{ENGINE}/step.py",
           "_tile_scores_eight_rows if WIDE_REGISTERS",
           "_tile_scores_eight_rows if not WIDE_REGISTERS"),
    Mutant("avx512_never_seen", f"{ENGINE}/step.py",
           "return 32 if \"+avx512f\" in features", "return 32 if \"avx512f\" in features"),
    Mutant("fold_bias_sums_scale_not_mean", f"{ENGINE}/step.py",
           "total += np.float64(folded[j]) * mean[j]", "total += np.float64(folded[j]) * scale[j]"),
    Mutant("fold_bias_adds_the_mean_term", f"{ENGINE}/step.py",
           "if has_bias else 0.0) - total", "if has_bias else 0.0) + total"),
    Mutant("fold_block_sum_not_stored", f"{ENGINE}/step.py",
           "        parts[c] = total", "        parts[c] = 0.0"),
    Mutant("fold_bias_drops_the_last_block", f"{ENGINE}/step.py",
           "for k in range(fold_parts.shape[0]):", "for k in range(fold_parts.shape[0] - 1):"),
    Mutant("gradient_does_not_fold_the_next_step", f"{ENGINE}/step.py",
           "            fold_columns(W, mean, scale, W_fold, j0, j1, fold_parts[block])",
           "            pass"),
    Mutant("update_weights_skips_the_bias_column", f"{ENGINE}/step.py",
           "stop = n_cols if block == count - 1 else j1", "stop = j1"),
    Mutant("epoch_never_sums_the_folded_bias", f"{ENGINE}/entry.py",
           "        fold_bias(W, has_bias, fold_parts, bias_fold)\n", "\n"),
    Mutant("first_chunk_adds_to_stale_scores", f"{ENGINE}/step.py",
           "S, i, n, j0 > 0, zero)", "S, i, n, j0 >= 0, zero)"),
    Mutant("last_feature_chunk_dropped", f"{ENGINE}/step.py",
           "for j0 in range(0, n_features, CHUNK):", "for j0 in range(0, n_features - 1, CHUNK):"),
    # -- step: softmax rows
    Mutant("argmax_ties_go_to_the_last_class", f"{ENGINE}/step.py",
           "if value > top:", "if value >= top:"),
    Mutant("score_clip_dropped", f"{ENGINE}/step.py",
           "z = max(S[i, c] - top, -clip)", "z = S[i, c] - top"),
    Mutant("onehot_subtracts_the_weight", f"{ENGINE}/step.py",
           "dS[i, label] -= factor", "dS[i, label] -= weight"),
    Mutant("row_loss_not_divided_by_b", f"{ENGINE}/step.py",
           "- z_label) * inv_b", "- z_label)"),
    Mutant("tile_loses_its_last_row", f"{ENGINE}/step.py",
           "        n = min(TILE_ROWS, b - i)\n        if gather:",
           "        n = min(TILE_ROWS, b - i - 1)\n        if gather:"),
    Mutant("sample_weight_of_the_position", f"{ENGINE}/step.py",
           "weight = sample_weight[row] if", "weight = sample_weight[r] if"),
    # -- step: gradient and update
    Mutant("gradient_reads_row_7_of_a_short_tile", f"{ENGINE}/step.py",
           "dS[i + 7, c] if n > 7 else zero", "dS[i + 7, c] if n > 6 else zero"),
    Mutant("gradient_drops_the_eighth_row", f"{ENGINE}/step.py",
           "+ d6 * t6 + d7 * t7)", "+ d6 * t6)"),
    Mutant("gradient_accumulators_not_reset", f"{ENGINE}/step.py",
           "            acc[c, np.uint64(jj)] = zero", "            pass"),
    Mutant("gradient_tiles_stop_before_the_last_row", f"{ENGINE}/step.py",
           "for i in range(0, b, TILE_ROWS):", "for i in range(0, b - 1, TILE_ROWS):"),
    Mutant("block_width_without_its_floor", f"{ENGINE}/step.py",
           "return max(64, min(256, BLOCK_FLOATS // n_classes // 64 * 64))",
           "return min(256, BLOCK_FLOATS // n_classes // 64 * 64)"),
    Mutant("nesterov_and_momentum_swapped", f"{ENGINE}/step.py",
           "step = g + momentum * v if nesterov else v",
           "step = v if nesterov else g + momentum * v"),
    Mutant("nesterov_reads_the_stored_velocity", f"{ENGINE}/step.py",
           "step = g + momentum * v if nesterov else v",
           "step = g + momentum * v_row[j] if nesterov else v"),
    Mutant("averaging_only_for_positive_alpha", f"{ENGINE}/step.py",
           "        if alpha != 0:", "        if alpha > 0:"),
    Mutant("averaging_adds_the_average", f"{ENGINE}/step.py",
           "a_row[j] += alpha * (w_row[j] - a_row[j])",
           "a_row[j] += alpha * (w_row[j] + a_row[j])"),
    Mutant("unfold_forgets_the_scale", f"{ENGINE}/step.py",
           "g[j] = scale[j] * (accumulated[k] - mean[j] * dS_sum) + two_reg * w[j]",
           "g[j] = (accumulated[k] - mean[j] * dS_sum) + two_reg * w[j]"),
    Mutant("gradient_block_ends_one_column_early", f"{ENGINE}/step.py",
           "j0, j1 = block * width, min(n_features, (block + 1) * width)\n        l2, norm",
           "j0, j1 = block * width, min(n_features - 1, (block + 1) * width)\n        l2, norm"),
    Mutant("bias_column_in_the_first_block", f"{ENGINE}/step.py",
           "if has_bias and block == n_blocks - 1:", "if has_bias and block == 0:"),
    Mutant("penalised_bias_left_out_of_the_loss", f"{ENGINE}/step.py",
           "                    l2 += np.float64(w) * w", "                    pass"),
    Mutant("clip_norm_of_the_weights", f"{ENGINE}/step.py",
           "norm += _sum_squares(G[c], j0, j1)", "norm += _sum_squares(W[c], j0, j1)"),
    Mutant("clipped_update_drops_the_last_block", f"{ENGINE}/step.py",
           "    for block in prange(count):", "    for block in prange(count - 1):"),
    # -- entry kernels
    Mutant("last_feature_block_dropped", f"{ENGINE}/step.py",
           "return max(1, (n_features + width - 1) // width)",
           "return max(1, n_features // width)"),
    Mutant("clip_against_squared_norm", f"{ENGINE}/entry.py",
           "if norm > grad_clip * grad_clip:", "if norm > grad_clip:"),
    Mutant("clip_factor_divides_by_the_squared_norm", f"{ENGINE}/entry.py",
           "grad_clip / np.sqrt(norm))", "grad_clip / norm)"),
    Mutant("loss_of_a_short_minibatch_counted_full", f"{ENGINE}/entry.py",
           "loss_sum += (data_loss + reg * l2) * b", "loss_sum += (data_loss + reg * l2) * batch"),
    Mutant("predict_misses_a_lone_last_row", f"{ENGINE}/entry.py",
           "n_tasks = (n + chunk - 1) // chunk\n    tiles",
           "n_tasks = (n + chunk - 2) // chunk\n    tiles"),
    Mutant("predict_chunk_stops_a_row_early", f"{ENGINE}/entry.py",
           "range(task * chunk, min(n, (task + 1) * chunk), TILE_ROWS)",
           "range(task * chunk, min(n - 1, (task + 1) * chunk), TILE_ROWS)"),
    # -- api: checks and calls
    Mutant("label_equal_to_the_class_count_accepted", f"{ENGINE}/api.py",
           "labels.max() >= n_classes):", "labels.max() > n_classes):"),
    Mutant("order_equal_to_the_row_count_accepted", f"{ENGINE}/api.py",
           "order.max() >= n_rows):", "order.max() > n_rows):"),
    Mutant("shift_of_max_shift_refused", f"{ENGINE}/api.py",
           "np.abs(shift).max() > MAX_SHIFT:", "np.abs(shift).max() >= MAX_SHIFT:"),
    Mutant("averaging_alphas_restart_every_call", f"{ENGINE}/api.py",
           "avg_alpha[first_step:first_step + STEPS_PER_CALL]", "avg_alpha[:STEPS_PER_CALL]"),
    # -- the thread governor
    Mutant("governor_prefers_the_slower_count", GOVERNOR,
           "if timings.latest[available] > self.SLOWER * timings.latest[1]",
           "if timings.latest[available] < self.SLOWER * timings.latest[1]"),
    Mutant("governor_probe_interval_tripled", GOVERNOR,
           "timings.probe_every *= 2", "timings.probe_every *= 3"),
    Mutant("governor_does_not_restore_the_threads", GOVERNOR,
           "            if threads != available:\n                self.set_threads(available)",
           "            if threads == available:\n                self.set_threads(available)"),
    # -- the full-batch objective (full.py)
    Mutant("full_no_max_shift", FULL, "top = max(top, value)", "top = 0.0", FULL_TESTS),
    Mutant("full_no_clip", FULL, "= max(z[r * n_classes + c] - top, -clip)",
           "= z[r * n_classes + c] - top", FULL_TESTS),
    Mutant("full_exp_of_the_first_row_only", FULL, "exp_into(z, exp_z, n * n_classes,",
           "exp_into(z, exp_z, n_classes,", FULL_TESTS),
    Mutant("full_loss_of_the_unshifted_label_score", FULL, "- z[r * n_classes + y])",
           "- z[y])", FULL_TESTS),
    # -- the softmax's exp (expo.py)
    Mutant("exp_taylor_one_term_short", EXPO, "DEGREE = 13", "DEGREE = 12", EXPO_TESTS),
    Mutant("exp_reduction_without_the_low_part", EXPO, " - whole * LN2_LO", "", EXPO_TESTS),
    Mutant("exp_reduction_rounds_down", EXPO, "LOG2_E * value + 0.5", "LOG2_E * value",
           EXPO_TESTS),
    Mutant("exp_no_lowest_clamp", EXPO, "x[k] if x[k] > LOWEST else LOWEST", "x[k]",
           EXPO_TESTS),
    Mutant("exp_lowest_too_high", EXPO, "LOWEST = -746.0", "LOWEST = -700.0", EXPO_TESTS),
    Mutant("exp_one_power_of_two_only", EXPO, "out[k] * high_power[k] * low_power[k]",
           "out[k] * high_power[k]", EXPO_TESTS),
    Mutant("exp_whole_power_in_one_half", EXPO, "half = power >> 1", "half = 0", EXPO_TESTS),
    Mutant("exp_writes_one_past_n", EXPO, "    for k in range(n):\n        out[k] = out",
           "    for k in range(n + 1):\n        out[k] = out", EXPO_TESTS),
    Mutant("full_loss_unweighted", FULL, "loss += w * (np.log", "loss += (np.log", FULL_TESTS),
    Mutant("full_gradient_unweighted", FULL, "g = g * w / total", "g = g / total", FULL_TESTS),
    Mutant("full_bias_left_out_of_the_scores", FULL, "np.float64(scores[r, c]) + bias[c]",
           "np.float64(scores[r, c])", FULL_TESTS),
    Mutant("full_bias_gradient_dropped", FULL, "bias_sum[c] += g", "bias_sum[c] += 0.0",
           FULL_TESTS),
    Mutant("full_tile_gradient_drops_its_last_row", FULL, "(d6 * t6[j] + d7 * t7[j])",
           "(d6 * t6[j])", FULL_TESTS),
    Mutant("full_chunk_accumulator_not_reset", FULL, "            G[:] = 0",
           "            pass", FULL_TESTS),
    Mutant("full_views_ignored", FULL, "if not plain:", "if False:", FULL_TESTS),
    Mutant("full_mean_not_subtracted", FULL, "out[j] = src[j] - mean[j]", "out[j] = src[j]",
           FULL_TESTS),
    Mutant("full_runs_by_thread_count", FULL,
           "runs = max(1, min(n_chunks, RUNS, RUN_BYTES // (8 * n_classes * P)))",
           "runs = max(1, min(n_chunks, numba.get_num_threads()))", FULL_TESTS),
    Mutant("full_run_sums_skip_the_last_run", FULL, "for k in range(runs):  # in run order",
           "for k in range(runs - 1):  # in run order", FULL_TESTS),
    Mutant("full_threads_not_restored", FULL, "        numba.set_num_threads(before)",
           "        pass", FULL_TESTS),
    Mutant("full_penalty_ignores_penalise_last", "softmax_cls/engines/contract.py",
           "l2_penalty(W, rule.reg, rule.penalise_last)", "l2_penalty(W, rule.reg, False)",
           FULL_TESTS),
    Mutant("full_precision_ignored", FULL, "W[:, :P] * pre.scale, dtype=dtype)",
           "W[:, :P] * pre.scale, dtype=np.float32)", FULL_TESTS),
    Mutant("full_half_subnormals_scaled_twice", FULL, "np.float32(_TWO_TO_MINUS_24)",
           "np.float32(2.0 ** -23)", FULL_TESTS),
    Mutant("full_half_inf_nan_exponent_kept", FULL, "out += np.uint32((128 - 16) << 23)",
           "out += np.uint32(0)", FULL_TESTS),
    Mutant("full_blas_from_one_class_more", FULL, "if W.shape[0] >= BLAS_FROM_CLASSES:",
           "if W.shape[0] > BLAS_FROM_CLASSES:", FULL_TESTS),
    Mutant("full_governor_bypassed", FULL, "        if workers is None:  # numba's",
           "        if False:  # numba's", FULL_TESTS),
    Mutant("full_weight_of_the_tile_position", FULL, "w = weight[row] if",
           "w = weight[i + r] if", FULL_TESTS),
    Mutant("full_label_of_the_tile_position", FULL, "y = labels[row]", "y = labels[i + r]",
           FULL_TESTS),
    Mutant("full_only_the_last_runs_finiteness", FULL, "ok = ok and ok_runs[k]",
           "ok = ok_runs[k]", FULL_TESTS),
    Mutant("full_writable_labels_signature", FULL,
           "labels = _readonly(np.asarray(data.labels, dtype=np.int64))",
           "labels = np.ascontiguousarray(data.labels, dtype=np.int64)", FULL_TESTS),
    Mutant("full_writable_index_signature", FULL,
           "index = _readonly(np.asarray(index, dtype=np.int64))",
           "index = np.ascontiguousarray(index, dtype=np.int64)", FULL_TESTS),
    Mutant("full_writable_weight_signature", FULL,
           "weight = _readonly(np.zeros(0, np.float32) if",
           "weight = np.ascontiguousarray(np.zeros(0, np.float32) if", FULL_TESTS),
    Mutant("full_non_finite_scores_unchecked", FULL, "if not np.isfinite(value):",
           "if False:", FULL_TESTS),
]


def copy_tree(destination: Path) -> None:
    """The package, its tests and pyproject.toml (pytest's settings) into destination."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.nbi", "*.nbc")
    for name in ("softmax_cls", "tests"):
        shutil.copytree(ROOT / name, destination / name, ignore=ignore)
    shutil.copy2(ROOT / "pyproject.toml", destination / "pyproject.toml")


def apply(mutant: Mutant, tree: Path | None) -> None:
    """Write the mutant into the copy in tree; with tree None, only check that it applies
    (its text is in the repository's file exactly once)."""
    text = ((tree or ROOT) / mutant.path).read_text()
    if text.count(mutant.old) != 1:
        raise SystemExit(f"error: mutant {mutant.name}: {mutant.old!r} is in {mutant.path} "
                         f"{text.count(mutant.old)} times, not once")
    if tree is not None:
        (tree / mutant.path).write_text(text.replace(mutant.old, mutant.new))


def pytest(tree: Path, arguments: list[str], timeout: float) -> tuple[str, str]:
    """('failed' / 'passed' / 'timeout', the output's last lines) of pytest in tree."""
    env = dict(os.environ, PYTHONPATH=str(tree), NUMBA_CACHE_DIR=str(tree / "numba-cache"))
    command = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *arguments]
    try:
        done = subprocess.run(command, cwd=tree, env=env, capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        return "timeout", ""
    tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-3:])
    return ("passed" if done.returncode == 0 else "failed"), tail


def run_mutant(mutant: Mutant, timeout: float) -> dict:
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="mutant-") as folder:
        tree = Path(folder)
        copy_tree(tree)
        apply(mutant, tree)
        outcome, tail = pytest(tree, list(mutant.tests) or PLAIN_TESTS, timeout)
        caught_by = "plain tests"
        if outcome == "passed":
            outcome, tail = pytest(tree, BOUNDSCHECK_TEST, timeout)
            caught_by = "NUMBA_BOUNDSCHECK test"
    status = "survived" if outcome == "passed" else "killed"
    return dict(name=mutant.name, path=mutant.path, status=status,
                caught_by=caught_by if status == "killed" else "", outcome=outcome,
                seconds=round(time.monotonic() - started, 1), tail=tail)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", help="comma-separated mutant names")
    parser.add_argument("--list", action="store_true", help="print the mutants' names")
    parser.add_argument("--timeout", type=float, default=900, help="seconds per pytest run")
    parser.add_argument("--out", type=Path, default=ROOT / "mutants" / "kernels.json",
                        help="where the results go (JSON; mutants/ is not tracked)")
    args = parser.parse_args()
    if args.list:
        print("\n".join(m.name for m in MUTANTS))
        return
    chosen = MUTANTS
    if args.only:
        names = args.only.split(",")
        unknown = sorted(set(names) - {m.name for m in MUTANTS})
        if unknown:
            raise SystemExit(f"error: no mutant called {', '.join(unknown)}")
        by_name = {m.name: m for m in MUTANTS}
        chosen = [by_name[name] for name in names]  # in the order given
    for mutant in chosen:  # every mutant applies before any runs
        apply(mutant, None)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    results = []
    for number, mutant in enumerate(chosen, 1):
        result = run_mutant(mutant, args.timeout)
        results.append(result)
        print(f"{number:3}/{len(chosen)} {result['status']:8} {result['seconds']:7.1f}s "
              f"{mutant.name}  {result['caught_by']}", flush=True)
        args.out.write_text(json.dumps(results, indent=1) + "\n")
    killed = sum(r["status"] == "killed" for r in results)
    print(f"killed {killed} of {len(results)}; survived: "
          f"{', '.join(r['name'] for r in results if r['status'] == 'survived') or 'none'}")


if __name__ == "__main__":
    main()
