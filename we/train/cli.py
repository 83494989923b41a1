"""`python -m we.train [--config FILE] [key=value ...]`: one run from the command line (`--keys`: the reference
of every run key, docs/keys.md, printed as a Markdown table).

Exit codes: 0 complete, 1 failed (the error is in result.json and on one line here), 2 bad config
(one line naming the key; a run of the recipe's full length without `out` is one) or a refused checkpoint (one line naming the file; nothing written), 3 diverged,
130 / 143 interrupted by SIGINT / SIGTERM (result.json says `interrupted`, last.pt keeps the finished
epochs, one line here says how to resume: the same command).

`seeds=[0,1,2]` with `out=DIR/s{seed}` trains those seeds as one seed array (`we.train.array_run`): one
folder per seed, each as its solo run writes it; the exit code is the worst member's.
"""
from __future__ import annotations

import argparse
import os
import shlex
import sys

from we.errors import ConfigError, SuiteError
from we.rundir import LAST_CHECKPOINT
from we.train.checkpoint import TRUST_FLAG
from we.train.config import CORE_KEYS, Config, load_config, load_yaml, parse_overrides
from we.train.array_config import array_configs
from we.train.array_run import train_array
from we.train.interrupt import Interrupted, interrupts_raise
from we.train.keyref import key_reference
from we.train.trainer import EXIT_CODES, log, main

ARRAY_STATUS_ORDER = ("complete", "diverged", "failed")  # a seed array's exit code: its worst member's


def check_out_given(cfg: Config, given: dict) -> None:
    """Without `out`, a run of its recipe's full length is refused (it would train for hours into the
    shared default folder); a shorter one says first where it writes."""
    if "out" in given:
        return
    if "epochs" not in given:
        raise ConfigError(f"config key 'out': no run folder given for a {cfg.epochs}-epoch run (the {cfg.recipe} "
                          f"recipe's full length for {cfg.dataset}); pass out=DIR (e.g. out=results/runs/{cfg.model}-"
                          f"{cfg.method}-s{cfg.seed}), or epochs=N for a shorter run into {CORE_KEYS['out'].default}")
    log(f"no out given: writing {cfg.epochs} epoch{'s' if cfg.epochs != 1 else ''} of {cfg.model} on {cfg.dataset} into {cfg.out}")


def cli(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m we.train", description="Train one run (resumes from its folder); "
                                     "with seeds=[...] and out=DIR/s{seed}: the seeds as one seed array.")
    parser.add_argument("--config", help="YAML file of config keys (overridden by key=value arguments)")
    parser.add_argument("overrides", nargs="*", help="key=value, e.g. model=resnet56 method=we epochs=10")
    parser.add_argument(TRUST_FLAG, action="store_true",
                        help=f"only for a {LAST_CHECKPOINT} you wrote yourself with an earlier version of the suite: load it "
                             "once with full unpickling (which can run code) and rewrite it in the safe format")
    parser.add_argument("--keys", action="store_true",
                        help="print the reference of every run key (a Markdown table, docs/keys.md) and exit")
    args = parser.parse_args(argv)
    if args.keys:
        print(key_reference(), end="")
        return 0
    seeds = [a for a in args.overrides if a.split("=", 1)[0].strip() == "seeds"]
    overrides = [a for a in args.overrides if a not in seeds]
    with interrupts_raise():
        try:
            if seeds:  # a seed array: one process, one folder per seed (we.train.array_run)
                results = train_array(array_configs(args.config, overrides, parse_overrides(seeds)["seeds"]),
                                      trust_checkpoint=args.trust_checkpoint)
                result = max(results, key=lambda r: ARRAY_STATUS_ORDER.index(r["status"]))
            else:
                cfg = load_config(args.config, overrides)
                check_out_given(cfg, {**(load_yaml(args.config) if args.config else {}), **parse_overrides(overrides)})
                result = main(cfg, trust_checkpoint=args.trust_checkpoint)
        except SuiteError as err:  # a bad config, checkpoint or run-folder file: one line, nothing written
            print(f"error: {err}", file=sys.stderr)
            return 2
        except Exception as err:  # noqa: BLE001 - reported in result.json and as one line here
            print(f"error: {type(err).__name__}: {err}", file=sys.stderr)
            return 1
        except Interrupted as stop:
            again = shlex.join(["python", "-m", "we.train", *(sys.argv[1:] if argv is None else argv)])
            print(f"{stop} {stop.where()}; resume with: {again}", file=sys.stderr, flush=True)
            return stop.exit_code
    summary = {k: result.get(k) for k in ("status", "final_top1", "best_top1", "epochs_done")}
    if int(os.environ.get("RANK", "0")) == 0:  # rank 0 only under a distributed launch
        log(f"result: {summary}")
    return EXIT_CODES.get(result["status"], 1)
