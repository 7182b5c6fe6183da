#!/usr/bin/env python3
"""Writes tests/fixtures/bleu/sacrebleu.json: corpus BLEU-4 as sacrebleu computes it (default
settings: 13a tokenization, exp smoothing, case-sensitive) for hand-made cases that exercise the
tokenizer (punctuation, numbers, dashes, HTML entities, unicode) and the brevity penalty, plus the
first 200 lines of the Multi30k test set scored against a corrupted copy of themselves.

Usage: python tools/make_bleu_fixtures.py   (pip install sacrebleu==2.5.1)
"""
import gzip
import json
import pathlib
import random

import sacrebleu

ROOT = pathlib.Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "fixtures" / "bleu" / "sacrebleu.json"
DATA = ROOT.parent / "shared" / "data" / "multi30k" / "test_2016_flickr.de.gz"

CASES = [
    ("identical", ["Ein Mann schläft.", "Zwei Hunde spielen im Schnee."],
     ["Ein Mann schläft.", "Zwei Hunde spielen im Schnee."]),
    ("punctuation_numbers_dashes", ["It costs 3.50 dollars, or 1,000 cents - no: 12-3!", "A (quoted) \"word\" & more&amp;less"],
     ["It costs 3.50 dollars , or 1,000 cents-no: 12 - 3 !", "A (quoted) 'word' &amp; more & less"]),
    ("short_hypothesis_brevity_penalty", ["the cat", "a dog runs"],
     ["the cat sat on the mat today", "a dog runs across the green field"]),
    ("no_four_gram_match_smoothing", ["one two three", "four five six seven"],
     ["one two four", "four five six eight"]),
    ("unicode_and_case", ["Über den Fluß fährt ein Boot.", "DAS IST GUT"],
     ["Über den Fluss fährt ein Boot .", "das ist gut"]),
    ("empty_hypothesis", ["", "a b c d e"], ["x y z", "a b c d e"]),
]


def corrupt(line, rng):
    words = line.split()
    for i in range(len(words)):
        r = rng.random()
        if r < 0.15:
            words[i] = "etwas"
        elif r < 0.2:
            words[i] = ""
    if rng.random() < 0.3 and len(words) > 3:
        words = words[:-2]
    return " ".join(w for w in words if w)


def main():
    out = []
    for name, hyps, refs in CASES:
        b = sacrebleu.corpus_bleu(hyps, [refs])
        out.append(dict(name=name, hyps=hyps, refs=refs, score=b.score, counts=b.counts, totals=b.totals,
                        sys_len=b.sys_len, ref_len=b.ref_len))
    refs = [l.decode("utf-8").rstrip("\n") for l in gzip.open(DATA)][:200]
    rng = random.Random(7)
    hyps = [corrupt(r, rng) for r in refs]
    b = sacrebleu.corpus_bleu(hyps, [refs])
    out.append(dict(name="multi30k_test_corrupted", hyps=hyps, refs=refs, score=b.score, counts=b.counts,
                    totals=b.totals, sys_len=b.sys_len, ref_len=b.ref_len))
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps({"sacrebleu": sacrebleu.__version__, "signature": "nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:" + sacrebleu.__version__,
                               "cases": out}, ensure_ascii=False, indent=1))
    for c in out:
        print(f"{c['name']:<36} {c['score']:.4f}")


if __name__ == "__main__":
    main()
