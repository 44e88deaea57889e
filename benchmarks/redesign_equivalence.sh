#!/bin/bash
# Issue 13's before/after check: one demo registry built by the code before the redesign, answered by that code and
# by this checkout. Usage (from a scratch directory):
#   git worktree add OLD_PARENT/taskreg 100c86d     # the code before issue 12/13 (any checkout named taskreg)
#   (cd . && PYTHONPATH=OLD_PARENT python -m taskreg.cli demo)   # builds ./demo-registry with the old code
#   OLD=OLD_PARENT bash benchmarks/redesign_equivalence.sh && python benchmarks/redesign_equivalence.py .
# PY / TASKREG: the python and taskreg of the new side (default: those on PATH). The old code's `select` spells the estimator --embedding; both sides use the defaults, so only --method is passed.
set -u
OLD=${OLD:?set OLD to the parent directory of the old checkout named taskreg}
rm -rf reg-old reg-new out-old out-new; cp -a demo-registry reg-old; cp -a demo-registry reg-new; mkdir out-old out-new
Q=("builtin:mnist5k?classes=5,6&n=400&split=train" "builtin:patches?classes=coins,rocket,camera&split=train" "builtin:mnist5k?classes=0,8&n=400&split=train&transform=invert")
run() { # side pythonpath args...
  local side=$1 pp=$2; shift 2
  if [ "$side" = old ]; then PYTHONPATH=$pp ${PY:-python} -m taskreg.cli "$@"; else ${TASKREG:-taskreg} "$@"; fi
}
for i in 0 1 2; do
  for m in model2vec asym sym domain logme hscore leep nce generic random; do
    run old $OLD select --registry reg-old --data "${Q[$i]}" --method $m --top 20 --json > out-old/select-$i-$m.json 2> out-old/select-$i-$m.err
    run new x --registry reg-new select --data "${Q[$i]}" --method $m --top 20 --json > out-new/select-$i-$m.json 2> out-new/select-$i-$m.err
  done
done
for b in 3 6 10 15; do
  run old $OLD policy --registry reg-old --affinity taskonomy --budget $b --json > out-old/policy-$b.json 2> out-old/policy-$b.err
  run new x --registry reg-new policy --affinity taskonomy --budget $b --free-source-only --json > out-new/policy-$b.json 2> out-new/policy-$b.err
  run new x --registry reg-new policy --affinity taskonomy --budget $b --json > out-new/policy-paper-$b.json 2> out-new/policy-paper-$b.err
done
