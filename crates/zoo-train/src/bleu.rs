//! Corpus BLEU-4 exactly as sacrebleu computes it by default (`nrefs:1|case:mixed|eff:no|
//! tok:13a|smooth:exp`): mteval-v13a tokenization of detokenized text, clipped n-gram counts
//! summed over the corpus, the brevity penalty, and sacrebleu's "exp" smoothing for orders
//! without a match. Checked against sacrebleu 2.5.1 on fixtures (`tools/make_bleu_fixtures.py`).

use std::collections::HashMap;

/// The score and the statistics it comes from (the fields sacrebleu reports).
#[derive(Debug, Clone, PartialEq)]
pub struct Bleu {
    /// BLEU in [0, 100].
    pub score: f64,
    /// Clipped n-gram matches, n = 1..=4.
    pub counts: [usize; 4],
    /// Hypothesis n-grams, n = 1..=4.
    pub totals: [usize; 4],
    /// Hypothesis tokens.
    pub sys_len: usize,
    /// Reference tokens.
    pub ref_len: usize,
}

impl Bleu {
    /// Brevity penalty.
    pub fn brevity_penalty(&self) -> f64 {
        if self.sys_len >= self.ref_len {
            1.0
        } else if self.sys_len == 0 {
            0.0
        } else {
            (1.0 - self.ref_len as f64 / self.sys_len as f64).exp()
        }
    }
}

impl std::fmt::Display for Bleu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let p: Vec<String> = (0..4)
            .map(|n| {
                let t = self.totals[n].max(1) as f64;
                format!("{:.1}", 100.0 * self.counts[n] as f64 / t)
            })
            .collect();
        write!(
            f,
            "BLEU = {:.2} {} (BP = {:.3} ratio = {:.3} hyp_len = {} ref_len = {})",
            self.score,
            p.join("/"),
            self.brevity_penalty(),
            self.sys_len as f64 / self.ref_len.max(1) as f64,
            self.sys_len,
            self.ref_len
        )
    }
}

fn in_13a_class(c: char) -> bool {
    // [\{-\~\[-\` -\&\(-\+\:-\@\/]
    matches!(c, '{'..='~' | '['..='`' | ' '..='&' | '('..='+' | ':'..='@' | '/')
}

/// mteval-v13a tokenization, as sacrebleu's `Tokenizer13a` (including its regex passes).
pub fn tokenize_13a(line: &str) -> String {
    let mut line = line
        .replace("<skipped>", "")
        .replace("-\n", "")
        .replace('\n', " ");
    if line.contains('&') {
        line = line
            .replace("&quot;", "\"")
            .replace("&amp;", "&")
            .replace("&lt;", "<")
            .replace("&gt;", ">");
    }
    let s: Vec<char> = format!(" {line} ").chars().collect();
    // 1. ' \1 ' around punctuation and symbols of the class.
    let mut a = Vec::with_capacity(s.len() * 2);
    for &c in &s {
        if in_13a_class(c) {
            a.extend([' ', c, ' ']);
        } else {
            a.push(c);
        }
    }
    let digit = |c: char| c.is_ascii_digit();
    let dot = |c: char| c == '.' || c == ',';
    // 2. ([^0-9])([\.,]) -> '\1 \2 ' (non-overlapping, left to right, like re.sub).
    let mut b = Vec::with_capacity(a.len() * 2);
    let mut i = 0;
    while i < a.len() {
        if i + 1 < a.len() && !digit(a[i]) && dot(a[i + 1]) {
            b.extend([a[i], ' ', a[i + 1], ' ']);
            i += 2;
        } else {
            b.push(a[i]);
            i += 1;
        }
    }
    // 3. ([\.,])([^0-9]) -> ' \1 \2'.
    let mut c = Vec::with_capacity(b.len() * 2);
    let mut i = 0;
    while i < b.len() {
        if i + 1 < b.len() && dot(b[i]) && !digit(b[i + 1]) {
            c.extend([' ', b[i], ' ', b[i + 1]]);
            i += 2;
        } else {
            c.push(b[i]);
            i += 1;
        }
    }
    // 4. ([0-9])(-) -> '\1 \2 '.
    let mut d = Vec::with_capacity(c.len() * 2);
    let mut i = 0;
    while i < c.len() {
        if i + 1 < c.len() && digit(c[i]) && c[i + 1] == '-' {
            d.extend([c[i], ' ', '-', ' ']);
            i += 2;
        } else {
            d.push(c[i]);
            i += 1;
        }
    }
    d.into_iter()
        .collect::<String>()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

fn ngrams(tokens: &[&str], n: usize) -> HashMap<Vec<String>, usize> {
    let mut m = HashMap::new();
    if tokens.len() >= n {
        for w in tokens.windows(n) {
            *m.entry(w.iter().map(|s| s.to_string()).collect()).or_insert(0) += 1;
        }
    }
    m
}

/// Corpus BLEU of `hypotheses` against one reference each (detokenized text; tokenized here).
pub fn corpus_bleu(hypotheses: &[impl AsRef<str>], references: &[impl AsRef<str>]) -> Bleu {
    let mut counts = [0usize; 4];
    let mut totals = [0usize; 4];
    let (mut sys_len, mut ref_len) = (0, 0);
    for (h, r) in hypotheses.iter().zip(references) {
        let (h, r) = (
            tokenize_13a(h.as_ref().trim_end()),
            tokenize_13a(r.as_ref().trim_end()),
        );
        let (ht, rt): (Vec<&str>, Vec<&str>) = (
            h.split(' ').filter(|t| !t.is_empty()).collect(),
            r.split(' ').filter(|t| !t.is_empty()).collect(),
        );
        sys_len += ht.len();
        ref_len += rt.len();
        for n in 1..=4 {
            let (hn, rn) = (ngrams(&ht, n), ngrams(&rt, n));
            totals[n - 1] += ht.len().saturating_sub(n - 1);
            counts[n - 1] += hn
                .iter()
                .map(|(g, &c)| c.min(*rn.get(g).unwrap_or(&0)))
                .sum::<usize>();
        }
    }
    let bleu = Bleu {
        score: 0.0,
        counts,
        totals,
        sys_len,
        ref_len,
    };
    if counts.iter().all(|&c| c == 0) {
        return bleu;
    }
    let mut precisions = [0f64; 4];
    let mut smooth = 1.0;
    for n in 0..4 {
        if totals[n] == 0 {
            break;
        }
        precisions[n] = if counts[n] == 0 {
            smooth *= 2.0;
            100.0 / (smooth * totals[n] as f64)
        } else {
            100.0 * counts[n] as f64 / totals[n] as f64
        };
    }
    let log_sum: f64 = precisions
        .iter()
        .map(|&p| if p > 0.0 { p.ln() } else { -9_999_999_999.0 })
        .sum();
    Bleu {
        score: bleu.brevity_penalty() * (log_sum / 4.0).exp(),
        ..bleu
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokenization_follows_mteval_13a() {
        assert_eq!(
            tokenize_13a("It costs 3.50 dollars, or 1,000 cents - no: 12-3!"),
            "It costs 3.50 dollars , or 1,000 cents - no : 12 - 3 !"
        );
        assert_eq!(tokenize_13a("A &quot;b&quot; &amp; c."), "A \" b \" & c .");
        assert_eq!(tokenize_13a("Ein Mann schläft."), "Ein Mann schläft .");
    }

    #[test]
    fn matches_sacrebleu_on_its_fixtures() {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/bleu/sacrebleu.json");
        let text = std::fs::read_to_string(&path)
            .expect("tests/fixtures/bleu/sacrebleu.json (tools/make_bleu_fixtures.py)");
        let v: serde_json::Value = serde_json::from_str(&text).expect("json");
        let cases = v["cases"].as_array().expect("cases");
        assert!(cases.len() >= 7);
        for c in cases {
            let strs = |k: &str| -> Vec<String> {
                c[k].as_array()
                    .expect(k)
                    .iter()
                    .map(|s| s.as_str().expect("str").to_string())
                    .collect()
            };
            let ints = |k: &str| -> Vec<usize> {
                c[k].as_array()
                    .expect(k)
                    .iter()
                    .map(|x| x.as_u64().expect("int") as usize)
                    .collect()
            };
            let b = corpus_bleu(&strs("hyps"), &strs("refs"));
            let name = c["name"].as_str().expect("name");
            assert_eq!(b.counts.to_vec(), ints("counts"), "{name}: counts");
            assert_eq!(b.totals.to_vec(), ints("totals"), "{name}: totals");
            assert_eq!(
                (b.sys_len, b.ref_len),
                (
                    c["sys_len"].as_u64().expect("sys") as usize,
                    c["ref_len"].as_u64().expect("ref") as usize
                ),
                "{name}: lengths"
            );
            let want = c["score"].as_f64().expect("score");
            assert!(
                (b.score - want).abs() < 1e-9,
                "{name}: BLEU {} vs sacrebleu {want}",
                b.score
            );
        }
    }
}
