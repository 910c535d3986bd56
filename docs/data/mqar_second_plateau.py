"""The script behind docs/data/mqar_second_plateau.json (docs/experiments.md, "The second
plateau"): train the tiny MQAR configuration (N = 32, d_model = 64, P = 4, V = 32, 800 steps
of batch 128, lr 1e-3, numba backend, the CLI's defaults otherwise), then look at how the
trained model answers 2048 fresh sequences:

- accuracy by the asked pair's place in the context, and by the query's order;
- how many of a sequence's four queries are right, and how many distinct answers it gives;
- for every two key tokens that share a sequence, how often their queries get the same
  answer (the "co-grouping" of the keys: near 0 or near 1 for every pair of keys means the
  model sorts the keys into fixed groups it cannot tell apart within), and the groups: the
  keys joined wherever two share an answer in half their sequences or more;
- for ZETA, the weight layer 2 gives, at a query position, to the value position of the pair
  asked, of another pair whose key is in the same group, and of a pair of the other group.

    python docs/data/mqar_second_plateau.py zeta 0 out.json   # attention, seed, output
"""
import json
import sys
from collections import Counter

import numpy as np

from zeta_ref.mqar import model as M
from zeta_ref.mqar.task import make_batch
from zeta_ref.mqar.train import RunConfig, train

att, seed, path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
cfg = RunConfig(seq_len=32, d_model=64, pairs=4, vocab=32, batch=128, lr=1e-3, steps=800,
                seed=seed, test_size=512, eval_every=100, attention=att, backend="numba")
state = {}
res = train(cfg, state=state)
b = make_batch(np.random.default_rng(123), 2048, 32, 4, 32)
_, logits, caches = M.forward(state["model_config"], state["params"], state["log_gammas"],
                              b.tokens, b.query_pos, b.answers, "numba")
pred = np.asarray(logits).argmax(axis=-1)  # (B, P): the answer at each query
ok = pred == b.answers
keys, values = b.tokens[:, 0:8:2], b.tokens[:, 1:8:2]  # (B, P) in context order
asked_key = np.take_along_axis(b.tokens, b.query_pos, axis=1)
asked = (asked_key[:, :, None] == keys[:, None, :]).argmax(-1)  # (B, P): the pair asked
answer_of_pair = np.empty_like(pred)  # (B, P): the answer to the query asking pair j
np.put_along_axis(answer_of_pair, asked, pred, axis=1)
distinct = np.array([len(set(r)) for r in pred])
groups = Counter()  # the partition of the four pairs (context order) by equal answers
for s in np.flatnonzero(distinct == 2):
    groups[str(sorted(np.flatnonzero(answer_of_pair[s] == u).tolist()
                      for u in set(answer_of_pair[s].tolist())))] += 1
same, seen = np.zeros((32, 32)), np.zeros((32, 32))
for i in range(4):
    for j in range(4):
        if i != j:
            np.add.at(seen, (keys[:, i], keys[:, j]), 1)
            np.add.at(same, (keys[:, i], keys[:, j]),
                      answer_of_pair[:, i] == answer_of_pair[:, j])
co = same[seen > 0] / seen[seen > 0]
# the groups: keys joined wherever their queries share an answer in half their sequences or more
share = np.where(seen > 0, same / np.maximum(seen, 1), 0.0)
tokens = sorted(set(keys.ravel().tolist()))
group_of = {}
for first in tokens:
    if first in group_of:
        continue
    group_of[first], todo = first, [first]
    while todo:
        x = todo.pop()
        for y in tokens:
            if y not in group_of and share[x, y] >= 0.5:
                group_of[y] = first
                todo.append(y)
key_groups = [[t for t in tokens if group_of[t] == g] for g in sorted(set(group_of.values()))]
within = [share[x, y] for g in key_groups for x in g for y in g if x != y]
across = [share[x, y] for g in key_groups for h in key_groups if g is not h for x in g for y in h]
# layer 2 (ZETA): the weight a query position gives the value position of the pair it asks,
# of the other pairs of its key's group, and of the pairs of the other group (each averaged
# over the pairs of that kind)
layer2 = None
if att == "zeta":
    inter = caches["h1.attn"][3][4]
    cand, weight = np.asarray(inter.candidates)[:, 0], np.asarray(inter.weights)[:, 0]
    gid = {t: i for i, g in enumerate(key_groups) for t in g}
    kinds = {"asked": [], "same_group": [], "other_group": []}
    for s in range(pred.shape[0]):
        for q in range(4):
            at, j_asked = b.query_pos[s, q], asked[s, q]
            on = [float(weight[s, at][cand[s, at] == 2 * j + 1].sum()) for j in range(4)]
            kinds["asked"].append(on[j_asked])
            for j in range(4):
                if j != j_asked:
                    same_group = gid[keys[s, j]] == gid[keys[s, j_asked]]
                    kinds["same_group" if same_group else "other_group"].append(on[j])
    layer2 = {kind: float(np.mean(v)) for kind, v in kinds.items() if v}
wrong = ~ok
out = {
    "command": "python docs/data/mqar_second_plateau.py " + " ".join(sys.argv[1:3]),
    "config": {"attention": att, "seed": seed, "seq_len": 32, "d_model": 64, "pairs": 4,
               "vocab": 32, "batch": 128, "lr": 1e-3, "steps": 800, "backend": "numba"},
    "held_out_accuracy_every_100_steps": [round(e["accuracy"], 4) for e in res["evals"]],
    "accuracy": float(ok.mean()),
    "accuracy_by_pair_in_context": [float(ok[asked == j].mean()) for j in range(4)],
    "accuracy_by_query_order": [float(ok[:, j].mean()) for j in range(4)],
    "wrong_answers_that_are_a_context_value": float(
        (pred[:, :, None] == values[:, None, :]).any(-1)[wrong].mean()),
    "sequences_by_right_answers_0_to_4": np.bincount(ok.sum(1), minlength=5).tolist(),
    "sequences_by_distinct_answers_0_to_4": np.bincount(distinct, minlength=5).tolist(),
    "two_answer_sequences_by_partition_of_the_pairs": dict(groups.most_common()),
    "key_pairs": int(co.size),
    "key_pairs_by_co_grouping_in_tenths": np.histogram(co, bins=10, range=(0, 1))[0].tolist(),
    "key_groups": key_groups,
    "co_grouping_within_groups_min_mean": [float(min(within, default=0)),
                                           float(np.mean(within)) if within else 0.0],
    "co_grouping_across_groups_max": float(max(across, default=0)),
    "layer2_weight_on_value_positions": layer2,
}
json.dump(out, open(path, "w"), indent=1)
print(json.dumps({k: out[k] for k in ("accuracy", "sequences_by_right_answers_0_to_4",
                                      "key_pairs_by_co_grouping_in_tenths", "key_groups",
                                      "co_grouping_across_groups_max",
                                      "layer2_weight_on_value_positions")}))
